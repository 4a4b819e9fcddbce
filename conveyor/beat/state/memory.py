"""Beat's run history for ``memory://`` brokers: a dict shared by the process.

Every beat in this process on the same URL shares one history, as they
share the in-memory broker; nothing survives the process.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from conveyor.beat.state.base import BeatState, EntryRuns, from_micros, to_micros

__all__ = ["MemoryBeatState", "reset_memory_beat_state"]


class _MemoryData:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, tuple[int, int]] = {}
        self.meta: dict[str, int] = {}
        self.notes: dict[str, str] = {}


_MEMORY: dict[str, _MemoryData] = {}
_MEMORY_LOCK = threading.Lock()


class MemoryBeatState(BeatState):
    """For ``memory://`` brokers: shared by every beat in this process on the same URL."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        with _MEMORY_LOCK:
            self._data = _MEMORY.setdefault(url, _MemoryData())

    def runs(self, names: list[str] | None = None) -> dict[str, EntryRuns]:
        with self._data.lock:
            found = self._data.runs if names is None else {
                n: self._data.runs[n] for n in names if n in self._data.runs}
            return {n: EntryRuns(from_micros(us), count) for n, (us, count) in found.items()}

    def record_run(self, name: str, run_at: datetime) -> bool:
        micros = to_micros(run_at)
        with self._data.lock:
            current = self._data.runs.get(name)
            if current is not None and current[0] >= micros:
                return False
            self._data.runs[name] = (micros, (current[1] if current else 0) + 1)
            return True

    def _get_meta(self, key: str) -> int | None:
        with self._data.lock:
            return self._data.meta.get(key)

    def _raise_meta(self, key: str, micros: int) -> None:
        with self._data.lock:
            self._data.meta[key] = max(micros, self._data.meta.get(key, micros))

    def note(self, key: str) -> str | None:
        with self._data.lock:
            return self._data.notes.get(key)

    def set_note(self, key: str, value: str) -> None:
        with self._data.lock:
            self._data.notes[key] = value


def reset_memory_beat_state() -> None:
    """Forget every in-process history (for test isolation)."""
    with _MEMORY_LOCK:
        _MEMORY.clear()

