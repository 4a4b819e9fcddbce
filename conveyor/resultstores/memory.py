"""In-process result store for tests (shared per URL within the process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor.resultstores.base import (
    FencedWrite,
    JoinPart,
    ResultStore,
    Stored,
    Written,
    deadline_after,
)
from conveyor.resultstores.record import Attempt


@dataclass
class _MemoryResults:
    cond: threading.Condition = field(default_factory=threading.Condition)
    results: dict[str, tuple[Stored, float]] = field(default_factory=dict)
    groups: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    chords: dict[str, dict[int, bytes]] = field(default_factory=dict)
    # chord id -> the header index whose chord_add completed the join, or
    # None when chord_fail closed it; a fired chord keeps its parts so the
    # completer's repeated call gets them again.
    chords_done: dict[str, int | None] = field(default_factory=dict)


_STORES: dict[str, _MemoryResults] = {}
_STORES_LOCK = threading.Lock()


class MemoryResultStore(ResultStore):
    """See module docstring."""

    batches_fenced_writes = True  # one step under the store's lock

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        with _STORES_LOCK:
            self._m = _STORES.setdefault(url, _MemoryResults())

    def set(self, task_id: str, state: str, payload: bytes, ttl: float) -> None:
        with self._m.cond:
            self._m.results[task_id] = (Stored(state, payload), time.time() + ttl)
            self._m.cond.notify_all()

    def set_fenced(self, task_id: str, state: str, payload: bytes, ttl: float,
                   attempt: Attempt) -> bool:
        with self._m.cond:  # an RLock: the default's read and write become one step
            return super().set_fenced(task_id, state, payload, ttl, attempt)

    def set_many_fenced(self, writes: Sequence[FencedWrite], ttl: float) -> list[bool]:
        with self._m.cond:  # the whole batch in one step, as the other stores
            return super().set_many_fenced(writes, ttl)

    def set_many_fenced_and_join(self, writes: Sequence[tuple[FencedWrite, JoinPart | None]],
                                 ttl: float) -> list[Written]:
        with self._m.cond:  # writes and joins in one step, as on Redis
            return super().set_many_fenced_and_join(writes, ttl)

    def get(self, task_id: str) -> Stored | None:
        with self._m.cond:
            return self._live(task_id)

    def _live(self, task_id: str) -> Stored | None:
        entry = self._m.results.get(task_id)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    def wait(self, task_id: str, timeout: float | None) -> Stored | None:
        deadline = deadline_after(timeout)
        with self._m.cond:
            while True:
                current = self._live(task_id)
                if current is not None and current.ready:
                    return current
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return current
                self._m.cond.wait(remaining)

    def forget(self, task_ids: Sequence[str]) -> None:
        with self._m.cond:
            for task_id in task_ids:
                self._m.results.pop(task_id, None)

    def save_group(self, group_id: str, payload: bytes, ttl: float) -> None:
        with self._m.cond:
            self._m.groups[group_id] = (payload, time.time() + ttl)

    def load_group(self, group_id: str) -> bytes | None:
        with self._m.cond:
            entry = self._m.groups.get(group_id)
            return None if entry is None or entry[1] <= time.time() else entry[0]

    def chord_add(
        self, chord_id: str, index: int, size: int, payload: bytes, ttl: float
    ) -> list[bytes] | None:
        with self._m.cond:
            if chord_id in self._m.chords_done:
                if self._m.chords_done[chord_id] != index:
                    return None
                return [self._m.chords[chord_id][i] for i in range(size)]
            parts = self._m.chords.setdefault(chord_id, {})
            parts[index] = payload
            if len(parts) < size:
                return None
            self._m.chords_done[chord_id] = index
            return [parts[i] for i in range(size)]

    def chord_fail(self, chord_id: str, ttl: float) -> bool:
        with self._m.cond:
            if chord_id in self._m.chords_done:
                return False
            self._m.chords_done[chord_id] = None
            self._m.chords.pop(chord_id, None)
            return True


def reset_memory_results() -> None:
    """Forget every in-process result store (for test isolation)."""
    with _STORES_LOCK:
        _STORES.clear()
