"""Worker heartbeats and task counters, written for the monitor to read later.

The worker calls these hooks once per heartbeat (every
``worker_heartbeat_interval`` seconds) with aggregated numbers, never per
task, so they cost nothing on the hot path.  Storage is pluggable; the
default keeps nothing.
"""

from __future__ import annotations

from typing import Any, Protocol


class EventSink(Protocol):
    """Where heartbeats and counters go."""

    def worker_heartbeat(self, info: dict[str, Any], ttl: float) -> None: ...
    def worker_offline(self, worker_id: str) -> None: ...


class NullEvents:
    """Keeps nothing (the default until a store is configured)."""

    def worker_heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        return None

    def worker_offline(self, worker_id: str) -> None:
        return None
