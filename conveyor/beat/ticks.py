"""Which ticks of an entry to send, and each tick's identity: pure functions of stored facts.

Ticks come from the schedule, anchored on what is stored, never on when a
process happened to start: an interval entry's ticks are ``last_run_at + k *
every``, and a new interval entry starts on the grid of multiples of its
interval since the Unix epoch (or since its ``start_time``), so every beat
process computes the same ticks.  A new entry first runs at its first tick
after beat sees it.

Each tick has an identity, ``beat:<entry>:<tick in UTC, ISO 8601>``, which
beat sends as the message's idempotency key (and, through a UUID derived from
it, its task id): the second fence of exactly once (``service.py``).

Ticks missed while no beat ran follow ``beat_missed_policy``.  "While no beat
ran" means the last completed pass of any leader is older than the *failover
window*, ``2 * beat_lease_timeout + beat_max_loop_interval``, when a leader
begins its term; such a leader stores a *cutoff* (now), and ticks at or
before it are "missed":

* ``"once"`` (default): one run now for the latest missed tick, not a burst;
* ``"skip"``: no run for missed ticks; the next tick runs as usual;
* ``"all"``: every missed tick runs, at most :data:`MAX_CATCH_UP` per entry.

A failover or a restart quicker than the window is not an outage: every tick
in the gap is sent, late, by the new leader (guarantee 6: neither skipped nor
repeated).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from conveyor.beat import schedules

if TYPE_CHECKING:
    from conveyor._config import Settings

__all__ = ["MAX_CATCH_UP", "POLICIES", "TickPlan", "failover_window", "in_utc", "key_ttl",
           "plan_ticks", "task_id_for", "tick_key"]

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: The most ticks one entry sends in one pass (policy "all", or a long failover).
MAX_CATCH_UP = 100
#: Idempotency keys live at least this long, and at least two periods of the entry.
KEY_TTL_MIN = 3600.0
KEY_TTL_MAX = 2 * 366 * 86400.0
#: The values ``beat_missed_policy`` takes.
POLICIES = ("once", "skip", "all")

_MICROSECOND = timedelta(microseconds=1)
_FIRST_SPAN = timedelta(hours=1)
_SCAN_LIMIT = 100_000  # ticks an unknown kind of schedule may be stepped through per pass
_TASK_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "conveyor:beat")


# --------------------------------------------------------------------------- tick identity


def in_utc(moment: datetime) -> datetime:
    """``moment`` as an aware datetime in UTC."""
    return moment.astimezone(UTC)


def tick_key(name: str, tick: datetime) -> str:
    """The identity of one tick of one entry; the same in every beat process."""
    return f"beat:{name}:{in_utc(tick).isoformat()}"


def task_id_for(key: str) -> str:
    """A task id derived from the tick identity, so a repeated send also repeats the id."""
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, key))


def key_ttl(schedule: schedules.Schedule, tick: datetime, window: timedelta) -> float:
    """How long a tick's key must block repeats: longer than any leader could recompute it.

    A tick stays the "latest missed tick" until the next one, so the key
    outlives two periods, the failover window, and an hour in any case (but
    not two years: a one-shot schedule's "next run" is the end of time).
    """
    period = (in_utc(schedule.next_run(tick)) - in_utc(tick)).total_seconds()
    return min(max(KEY_TTL_MIN, 2 * period, 2 * window.total_seconds()), KEY_TTL_MAX)



def failover_window(conf: Settings) -> timedelta:
    """The longest gap a healthy failover leaves between two leaders' passes, with margin.

    The lease runs out at most ``ttl`` after the last renewal, renewals come
    every third of it, and a standby polls every third of it.
    """
    return timedelta(seconds=2 * conf.beat_lease_timeout + conf.beat_max_loop_interval)


# --------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class TickPlan:
    """What one pass does for one entry."""

    send: tuple[datetime, ...]  # ticks to send now, oldest first, in UTC
    wake: datetime | None  # the next tick after now (None: never again)
    dropped: bool  # missed ticks were left out (policy, or the catch-up cap)


def plan_ticks(
    schedule: schedules.Schedule,
    *,
    last: datetime | None,
    now: datetime,
    cutoff: datetime | None,
    window: timedelta,
    policy: str = "once",
    start_time: datetime | None = None,
    expires: datetime | None = None,
    limit: int = MAX_CATCH_UP,
) -> TickPlan:
    """Which ticks of one entry to send at ``now``, given the tick it last ran for.

    A pure function of stored facts (``last``, ``cutoff``) and ``now``, so any
    beat process reaches the same answer, and the tests can drive it directly.

    Ticks at or before the *edge* are missed ones and follow ``policy``; later
    ones are all sent.  The edge is the stored ``cutoff`` (beat came back from
    an outage then) or ``now - window``, whichever is later: a healthy leader,
    or one that took over in a failover, sees every tick within ``window`` of
    its time, so an older unsent tick belongs to an entry that was disabled or
    absent, and counts as missed too.
    """
    now = in_utc(now)
    edge = now - window if cutoff is None else max(in_utc(cutoff), now - window)
    after = _anchor(schedule, edge, start_time) if last is None else in_utc(last)
    first = in_utc(schedule.next_run(after))
    if first > now:
        return TickPlan((), _bounded(first, start_time, expires), False)
    send, dropped = _choose(schedule, after, now, edge, policy, limit)
    if last is None:
        # A never-run entry counts from the edge, so that a process taking over
        # still sends a first tick its predecessor did not; but at most that one:
        # the earlier ticks of the window predate the entry (no burst on adding it).
        send = send[-1:]
    latest = _recent(schedule, after, now, 1)[0][-1]
    kept = tuple(tick for tick in send if _in_force(tick, start_time, expires))
    return TickPlan(kept, _bounded(in_utc(schedule.next_run(latest)), start_time, expires), dropped)


def _anchor(schedule: schedules.Schedule, floor: datetime, start_time: datetime | None) -> datetime:
    """Where a never-run entry's ticks count from, the same in every process.

    An interval uses the grid of its multiples since the epoch (or since
    ``start_time``), taking the last grid point at or before ``floor``.
    """
    if isinstance(schedule, schedules.schedule):
        every = schedule.run_every
        origin = EPOCH if start_time is None else in_utc(start_time)
        return max(origin + ((floor - origin) // every) * every, origin - every)
    if start_time is not None:
        return max(floor, in_utc(start_time) - _MICROSECOND)
    return floor


def _choose(
    schedule: schedules.Schedule, after: datetime, now: datetime,
    edge: datetime, policy: str, limit: int,
) -> tuple[list[datetime], bool]:
    if edge <= after or policy == "all":
        return _recent(schedule, after, now, limit)
    edge = min(edge, now)
    fresh, truncated = _recent(schedule, after, now, limit, since=edge)
    latest_missed, more_missed = _recent(schedule, after, edge, 1)
    if fresh or policy == "skip":
        return fresh, truncated or bool(latest_missed)
    return latest_missed, more_missed  # "once"


def _recent(
    schedule: schedules.Schedule, after: datetime, until: datetime, limit: int,
    since: datetime | None = None,
) -> tuple[list[datetime], bool]:
    """The latest ``limit`` ticks in ``(after, until]`` later than ``since``, oldest
    first, in UTC; and whether earlier ones were left out."""
    lower = after if since is None or since < after else since
    if until <= lower or limit <= 0:
        return [], False
    if isinstance(schedule, schedules.schedule):
        return _interval_ticks(schedule.run_every, after, lower, until, limit)
    if isinstance(schedule, schedules.crontab):
        return _wall_clock_ticks(schedule, lower, until, limit)
    return _scanned_ticks(schedule, after, lower, until, limit)


def _interval_ticks(
    every: timedelta, after: datetime, lower: datetime, until: datetime, limit: int
) -> tuple[list[datetime], bool]:
    # Arithmetic, not iteration: a one-second interval after a week's outage
    # has 604,800 ticks.  timedelta arithmetic is exact, so these equal the
    # ticks next_run would step to.
    high = (until - after) // every
    low = 1 if lower == after else (lower - after) // every + 1
    count = high - low + 1
    if count <= 0:
        return [], False
    take = min(count, limit)
    return [after + k * every for k in range(high - take + 1, high + 1)], count > take


def _wall_clock_ticks(
    schedule: schedules.Schedule, lower: datetime, until: datetime, limit: int
) -> tuple[list[datetime], bool]:
    # A crontab's ticks do not depend on where counting starts, so search
    # backwards from ``until`` in growing windows instead of stepping through
    # a long outage from its beginning.
    span = _FIRST_SPAN
    while True:
        start = max(lower, until - span)
        found = deque((in_utc(t) for t in schedule.ticks_between(start, until)), maxlen=limit + 1)
        if len(found) > limit or start == lower:
            return list(found)[-limit:], len(found) > limit
        span *= 16


def _scanned_ticks(
    schedule: schedules.Schedule, after: datetime, lower: datetime, until: datetime, limit: int
) -> tuple[list[datetime], bool]:
    # An unknown kind of schedule may count from its last run, so step from there.
    found: deque[datetime] = deque(maxlen=limit + 1)
    for count, tick in enumerate(schedule.ticks_between(after, until)):
        if in_utc(tick) > lower:
            found.append(in_utc(tick))
        if count >= _SCAN_LIMIT:
            break
    return list(found)[-limit:], len(found) > limit


def _in_force(tick: datetime, start_time: datetime | None, expires: datetime | None) -> bool:
    return (start_time is None or tick >= start_time) and (expires is None or tick < expires)


def _bounded(
    wake: datetime, start_time: datetime | None, expires: datetime | None
) -> datetime | None:
    if expires is not None and wake >= expires:
        return None
    if start_time is not None and wake < start_time:
        return in_utc(start_time)
    return wake

