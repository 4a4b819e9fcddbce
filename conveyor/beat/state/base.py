"""Beat's run history: the protocol every store keeps, and how times are stored.

Whichever beat process leads, it must know when each entry last ran (so a
restart or a failover neither repeats nor forgets a tick) and when *any* beat
last ran (so ticks missed while none ran can follow ``beat_missed_policy``).
Both live where the broker keeps its data, so every beat process shares them:
one module per store (``memory.py``, ``sqlite.py``, ``redis.py``,
``postgres.py``), each with its storage layout in its docstring, chosen by
the broker URL's scheme (``open_beat_state`` in ``__init__.py``).

Times are stored as whole microseconds since the Unix epoch (UTC).  They are
exact: a tick one process derives from a stored ``last_run_at`` is identical,
to the microsecond, to the tick another process derives, and tick identities
(beat's idempotency keys) depend on that.  A float of seconds would round.

Every write only moves a time forward.  A leader that was paused (SIGSTOP, a
long GC, a frozen VM) and resumes after another took over cannot roll the
history back by recording an older tick late.  ``tests/contract/
beat_state_contract.py`` holds every store to this.

What is kept, per store: per entry the tick it last ran for and how many
ticks it ran for; ``alive_at`` (the end of the last pass a leader completed)
and ``cutoff`` (ticks at or before it were due while no beat ran); and the
note ``scheduler`` (the import path of the scheduler the last leader ran, so
the monitor shows that one, however beat was started).  None of it expires:
one small record per entry name.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = ["ALIVE_AT", "CUTOFF", "SCHEDULER", "BeatState", "EntryRuns", "from_micros",
           "to_micros"]

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

ALIVE_AT = "alive_at"
CUTOFF = "cutoff"
SCHEDULER = "scheduler"


def to_micros(moment: datetime) -> int:
    """An aware datetime as whole microseconds since the epoch (exact, unlike a float)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"beat times must be aware datetimes, got naive {moment.isoformat()}")
    return (moment - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The inverse of :func:`to_micros`, in UTC."""
    return EPOCH + timedelta(microseconds=int(micros))


@dataclass(frozen=True)
class EntryRuns:
    """What the store knows of one entry."""

    last_run_at: datetime
    total_run_count: int


class BeatState(abc.ABC):
    """The history store; one per process and broker URL, thread-safe."""

    # -- per entry -----------------------------------------------------------
    def last_run(self, name: str) -> datetime | None:
        """The tick ``name`` last ran for (aware UTC), or None if it never ran."""
        runs = self.runs([name]).get(name)
        return None if runs is None else runs.last_run_at

    @abc.abstractmethod
    def runs(self, names: list[str] | None = None) -> dict[str, EntryRuns]:
        """History of the given entries (all when None); entries that never ran are absent."""

    @abc.abstractmethod
    def record_run(self, name: str, run_at: datetime) -> bool:
        """Remember that ``name`` ran for the tick ``run_at``.

        Returns False, changing nothing, when a later tick is already recorded.
        """

    # -- beat as a whole -----------------------------------------------------
    def get(self, key: str) -> datetime | None:
        """``alive_at`` or ``cutoff``, or None if never written."""
        micros = self._get_meta(key)
        return None if micros is None else from_micros(micros)

    def advance(self, key: str, moment: datetime) -> None:
        """Set ``alive_at`` or ``cutoff`` to ``moment`` unless it already is later."""
        self._raise_meta(key, to_micros(moment))

    @abc.abstractmethod
    def _get_meta(self, key: str) -> int | None: ...

    @abc.abstractmethod
    def _raise_meta(self, key: str, micros: int) -> None: ...

    # -- notes: small facts about the running beat, last writer wins -----------
    @abc.abstractmethod
    def note(self, key: str) -> str | None:
        """A note such as ``scheduler``, or None if never written."""

    @abc.abstractmethod
    def set_note(self, key: str, value: str) -> None:
        """Write a note (the leader writes them when it takes the lease)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

