"""The scheduler plug-in interface: where beat's entries come from.

Beat (``service.py``) owns timing, the leader lease and sending.  A
*scheduler* owns the entries and their run history: which periodic tasks
exist right now, and when each last ran.  The default reads
``beat_schedule`` from settings; the Django ``DatabaseScheduler`` reads
models that can change while beat runs.  Beat calls :meth:`Scheduler.load`
every ``refresh_interval`` seconds, so edits show up without a restart.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

__all__ = ["Entry", "Scheduler"]

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.beat.schedules import Schedule


@dataclass(frozen=True)
class Entry:
    """One periodic task."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # queue, priority, expires, ...
    enabled: bool = True
    one_off: bool = False
    start_time: datetime | None = None
    expires: datetime | None = None


class Scheduler(abc.ABC):
    """A source of entries that also remembers when each entry last ran."""

    refresh_interval: float = 5.0

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    @abc.abstractmethod
    def load(self) -> list[Entry]:
        """The entries as they are now (called again every ``refresh_interval``)."""

    @abc.abstractmethod
    def last_run(self, name: str) -> datetime | None:
        """When ``name`` last ran (aware UTC), or None if never."""

    @abc.abstractmethod
    def record_run(self, entry: Entry, run_at: datetime) -> None:
        """Persist that ``entry`` ran for the tick ``run_at``: last_run_at,
        total_run_count, and disabling a ``one_off`` entry."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
