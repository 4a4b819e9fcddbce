"""Beat: send periodic tasks, each tick exactly once, however many beat processes run.

Any number of beat processes (``conveyor -A proj beat``, or ``worker -B``) may
run at once.  They compete for one named lease in the broker (``beat``): the
holder leads and sends, the others stand by and try again every third of the
lease time, so a standby takes over within ``beat_lease_timeout`` (plus one
poll) of the leader dying.  A clean stop releases the lease at once.

Exactly once rests on two fences:

1. Only the holder sends, and it confirms the lease before each tick it sends:
   when a third of the lease time has passed since the last renewal it renews
   first, and when a whole lease time has passed (the process was paused, say
   by SIGSTOP) it abandons the pass, because someone else may have led since.
2. Each tick has an identity, ``beat:<entry>:<tick in UTC, ISO 8601>``, sent
   as the message's idempotency key (and, through a UUID derived from it, its
   task id).  The broker stores a key at most once within its TTL, atomically
   across processes.  A leader that dies after sending but before recording
   the run makes the next leader compute the same identity from the same
   stored ``last_run_at``, and the broker refuses the repeat; a paused leader
   that slips a send past fence 1 is refused the same way.

Ticks come from the schedule, anchored on what is stored, never on when a
process happened to start: an interval entry's ticks are ``last_run_at + k *
every``, and a new interval entry starts on the grid of multiples of its
interval since the Unix epoch (or since its ``start_time``), so every beat
process computes the same ticks.  A new entry first runs at its first tick
after beat sees it.

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
repeated).  Run history lives beside the broker's data (``conveyor/beat_state.py``).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conveyor import schedules, signals
from conveyor.beat_state import ALIVE_AT, CUTOFF, SCHEDULER, BeatState, open_beat_state
from conveyor.config import load_object
from conveyor.exceptions import BrokerError, ConfigurationError, ConveyorError
from conveyor.scheduler import Entry, Scheduler

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.config import Settings

__all__ = [
    "BEAT_LEASE",
    "MAX_CATCH_UP",
    "Beat",
    "SettingsScheduler",
    "TickPlan",
    "beat_status",
    "load_scheduler",
    "plan_ticks",
    "run_embedded",
    "task_id_for",
    "tick_key",
]

log = logging.getLogger("conveyor.beat")

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: The broker lease beat processes compete for.
BEAT_LEASE = "beat"
#: The most ticks one entry sends in one pass (policy "all", or a long failover).
MAX_CATCH_UP = 100
#: Idempotency keys live at least this long, and at least two periods of the entry.
KEY_TTL_MIN = 3600.0
KEY_TTL_MAX = 2 * 366 * 86400.0
POLICIES = ("once", "skip", "all")

_MIN_SLEEP = 0.005
_MICROSECOND = timedelta(microseconds=1)
_FIRST_SPAN = timedelta(hours=1)
_SCAN_LIMIT = 100_000  # ticks an unknown kind of schedule may be stepped through per pass
_TASK_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "conveyor:beat")


# --------------------------------------------------------------------------- tick identity


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def tick_key(name: str, tick: datetime) -> str:
    """The identity of one tick of one entry; the same in every beat process."""
    return f"beat:{name}:{_utc(tick).isoformat()}"


def task_id_for(key: str) -> str:
    """A task id derived from the tick identity, so a repeated send also repeats the id."""
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, key))


def key_ttl(schedule: schedules.Schedule, tick: datetime, window: timedelta) -> float:
    """How long a tick's key must block repeats: longer than any leader could recompute it.

    A tick stays the "latest missed tick" until the next one, so the key
    outlives two periods, the failover window, and an hour in any case (but
    not two years: a one-shot schedule's "next run" is the end of time).
    """
    period = (_utc(schedule.next_run(tick)) - _utc(tick)).total_seconds()
    return min(max(KEY_TTL_MIN, 2 * period, 2 * window.total_seconds()), KEY_TTL_MAX)


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
    now = _utc(now)
    edge = now - window if cutoff is None else max(_utc(cutoff), now - window)
    after = _anchor(schedule, edge, start_time) if last is None else _utc(last)
    first = _utc(schedule.next_run(after))
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
    return TickPlan(kept, _bounded(_utc(schedule.next_run(latest)), start_time, expires), dropped)


def _anchor(schedule: schedules.Schedule, floor: datetime, start_time: datetime | None) -> datetime:
    """Where a never-run entry's ticks count from, the same in every process.

    An interval uses the grid of its multiples since the epoch (or since
    ``start_time``), taking the last grid point at or before ``floor``.
    """
    if isinstance(schedule, schedules.schedule):
        every = schedule.run_every
        origin = EPOCH if start_time is None else _utc(start_time)
        return max(origin + ((floor - origin) // every) * every, origin - every)
    if start_time is not None:
        return max(floor, _utc(start_time) - _MICROSECOND)
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
        found = deque((_utc(t) for t in schedule.ticks_between(start, until)), maxlen=limit + 1)
        if len(found) > limit or start == lower:
            return list(found)[-limit:], len(found) > limit
        span *= 16


def _scanned_ticks(
    schedule: schedules.Schedule, after: datetime, lower: datetime, until: datetime, limit: int
) -> tuple[list[datetime], bool]:
    # An unknown kind of schedule may count from its last run, so step from there.
    found: deque[datetime] = deque(maxlen=limit + 1)
    for count, tick in enumerate(schedule.ticks_between(after, until)):
        if _utc(tick) > lower:
            found.append(_utc(tick))
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
        return _utc(start_time)
    return wake


# --------------------------------------------------------------------------- settings scheduler

_ENTRY_KEYS = ("task", "schedule", "args", "kwargs", "options", "relative")
#: ``options`` a beat_schedule entry may pass on to ``send_task``.  Beat sets
#: the task id and idempotency key itself, and an ``eta`` would be the same
#: moment for every tick.
ENTRY_OPTIONS = frozenset({
    "queue", "priority", "expires", "countdown", "routing_key", "exchange", "headers",
    "time_limit", "soft_time_limit", "ignore_result", "serializer", "max_deliveries",
    "link", "link_error", "shadow",
})


class SettingsScheduler(Scheduler):
    """Entries from ``beat_schedule``; run history beside the broker's data.

    The default scheduler.  Entries take Celery's keys (``task``, ``schedule``,
    ``args``, ``kwargs``, ``options``, ``relative``); each is checked when
    loaded, down to whether its arguments can be serialized, so a mistake
    stops beat at start with the entry and key named instead of failing at
    3 a.m. when the tick comes.
    """

    refresh_interval = 30.0

    def __init__(self, app: Conveyor) -> None:
        super().__init__(app)
        self.state = open_beat_state(app)

    def load(self) -> list[Entry]:
        tz = self.app.conf.timezone
        return [entry_from_settings(self.app, name, spec, tz)
                for name, spec in self.app.conf.beat_schedule.items()]

    def last_run(self, name: str) -> datetime | None:
        return self.state.last_run(name)

    def record_run(self, entry: Entry, run_at: datetime) -> None:
        self.state.record_run(entry.name, run_at)

    def total_run_count(self, name: str) -> int:
        """How many ticks ``name`` ran for (0 if never)."""
        runs = self.state.runs([name]).get(name)
        return 0 if runs is None else runs.total_run_count

    def close(self) -> None:
        self.state.close()


def entry_from_settings(app: Conveyor, name: object, spec: object, tz: str | None) -> Entry:
    """One ``beat_schedule`` item as an :class:`Entry`; ConfigurationError names what is wrong."""
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        raise ConfigurationError(
            f"beat_schedule: entry names must be non-empty one-line strings, got {name!r}")
    where = f"beat_schedule[{name!r}]"
    if not isinstance(spec, Mapping):
        raise ConfigurationError(
            f"{where} must be a dict with 'task' and 'schedule', got {type(spec).__name__}")
    unknown = sorted(str(key) for key in spec if key not in _ENTRY_KEYS)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key {unknown[0]!r} (an entry takes {', '.join(_ENTRY_KEYS)})")
    task = spec.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"{where}['task'] must be the task's name, got {task!r}")
    if "schedule" not in spec:
        raise ConfigurationError(
            f"{where}: missing key 'schedule' (seconds, a timedelta, or crontab(...))")
    try:
        schedule = schedules.as_schedule(spec["schedule"], tz)
    except schedules.ScheduleError as exc:
        raise ConfigurationError(f"{where}['schedule']: {exc}") from exc
    if not isinstance(spec.get("relative", False), bool):
        raise ConfigurationError(f"{where}['relative'] must be True or False")
    entry = Entry(
        name=name, task=task, schedule=schedule,
        args=_entry_args(where, spec.get("args")),
        kwargs=_entry_kwargs(where, spec.get("kwargs")),
        options=_entry_options(where, spec.get("options")),
    )
    _check_sendable(app, entry, where)
    return entry


def _entry_args(where: str, value: object) -> tuple[Any, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{where}['args'] must be a list or tuple, got {value!r}")
    return tuple(value)


def _entry_kwargs(where: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(
            f"{where}['kwargs'] must be a dict with string keys, got {value!r}")
    return dict(value)


def _entry_options(where: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where}['options'] must be a dict, got {value!r}")
    unknown = sorted(str(key) for key in value if key not in ENTRY_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"{where}['options']: unknown option {unknown[0]!r} "
            f"(known: {', '.join(sorted(ENTRY_OPTIONS))})")
    return dict(value)


def _check_sendable(app: Conveyor, entry: Entry, where: str) -> None:
    """Build and encode the message once, so bad arguments fail now, not at the tick."""
    try:
        app.build_message(entry.task, entry.args, entry.kwargs, **entry.options).encode()
    except (ConveyorError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc


_SCHEDULER_ALIASES = {
    "django": "conveyor.contrib.django.schedulers:DatabaseScheduler",  # django-celery-beat's -S
    "django_celery_beat.schedulers:DatabaseScheduler":
        "conveyor.contrib.django.schedulers:DatabaseScheduler",
    "django_celery_beat.schedulers.DatabaseScheduler":
        "conveyor.contrib.django.schedulers:DatabaseScheduler",
    "celery.beat:PersistentScheduler": "conveyor.beat:SettingsScheduler",
    "celery.beat.PersistentScheduler": "conveyor.beat:SettingsScheduler",
}


def load_scheduler(app: Conveyor, path: str | None = None) -> Scheduler:
    """The scheduler ``path`` names (``--scheduler``), else ``beat_scheduler``, else settings.

    Celery's spellings of the two usual schedulers map onto Conveyor's, so a
    supervisor line moved over from Celery keeps working.
    """
    path = path or app.conf.beat_scheduler
    if not path:
        return SettingsScheduler(app)
    target = _SCHEDULER_ALIASES.get(path, path)
    if target != path:
        log.info("beat scheduler %s is %s in Conveyor", path, target)
    try:
        found = load_object(target)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"beat scheduler {path!r} cannot be imported: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, Scheduler)):
        raise ConfigurationError(
            f"beat scheduler {path!r} is {found!r}, not a conveyor.scheduler.Scheduler subclass")
    return found(app)


# --------------------------------------------------------------------------- the service


class Clock(Protocol):
    """Where beat reads time; tests pass a fake one."""

    def now(self) -> datetime:
        """Wall-clock time, aware."""

    def monotonic(self) -> float:
        """Seconds that never go back; lease ages are measured with it."""


class SystemClock:
    """The real clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class _PassAborted(Exception):
    """The lease was lost (or may have been) part way through a pass."""


def default_holder() -> str:
    """``host:pid:random``: unique per process, and readable in ``beat_status``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def failover_window(conf: Settings) -> timedelta:
    """The longest gap a healthy failover leaves between two leaders' passes, with margin.

    The lease runs out at most ``ttl`` after the last renewal, renewals come
    every third of it, and a standby polls every third of it.
    """
    return timedelta(seconds=2 * conf.beat_lease_timeout + conf.beat_max_loop_interval)


class Beat:
    """One beat process's loop: lead (hold the lease and send) or stand by."""

    def __init__(self, app: Conveyor, scheduler: Scheduler | None = None, *,
                 holder: str | None = None, clock: Clock | None = None,
                 state: BeatState | None = None) -> None:
        conf = app.conf
        if conf.beat_lease_timeout <= 0 or conf.beat_max_loop_interval <= 0:
            raise ConfigurationError(
                "beat_lease_timeout and beat_max_loop_interval must be positive seconds")
        if conf.beat_missed_policy not in POLICIES:
            raise ConfigurationError(
                f"beat_missed_policy must be one of {', '.join(POLICIES)}, "
                f"got {conf.beat_missed_policy!r}")
        self.app = app
        self.tz = _zone_setting(conf.timezone)
        self.scheduler = scheduler if scheduler is not None else SettingsScheduler(app)
        self.holder = holder or default_holder()
        self.clock: Clock = clock or SystemClock()
        self.state = state if state is not None else open_beat_state(app)
        self.lease_ttl = conf.beat_lease_timeout
        self.renew_every = self.lease_ttl / 3
        self.max_interval = conf.beat_max_loop_interval
        self.policy = conf.beat_missed_policy
        self.window = failover_window(conf)
        self.entries: list[Entry] = []
        self.is_leader = False
        self.thread: threading.Thread | None = None
        self._loaded_at: float | None = None
        self._renewed_at = float("-inf")
        self._cutoff: datetime | None = None
        self._reported: set[tuple[str, datetime | None]] = set()
        self._stopping = threading.Event()
        self._closed = False
        # Held for a whole pass; run_embedded makes fork() wait for it, so a
        # pool child is never forked while this thread holds a lock inside
        # logging, a stream or a connection (the child would inherit it held).
        self._busy = threading.Lock()

    def __repr__(self) -> str:
        role = "leader" if self.is_leader else "standby"
        return f"<Beat {self.holder} {role} entries={len(self.entries)}>"

    # -- running -------------------------------------------------------------
    def run(self) -> None:
        """Lead or stand by until :meth:`stop` (blocks); releases the lease on the way out."""
        try:
            self.app.finalize()
            if self._loaded_at is None:
                self.load()
            signals.beat_init.send(sender=self)
            if self.thread is threading.current_thread():  # started by run_embedded
                signals.beat_embedded_init.send(sender=self)
            log.info("beat %s starting: %d entries, scheduler %s, lease %gs, missed-tick "
                     "policy %r, time zone %s", self.holder, len(self.entries),
                     type(self.scheduler).__name__, self.lease_ttl, self.policy, self.tz.key)
            while not self._stopping.is_set():
                self._stopping.wait(self._safe_tick())
        finally:
            self.close()

    def stop(self) -> None:
        """Ask the loop to finish its pass, release the lease and return."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop and wait for the thread started by :func:`run_embedded`."""
        self.stop()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def close(self) -> None:
        """Release the lease (so a standby takes over now) and the connections."""
        with self._busy:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.is_leader:
            self.is_leader = False
            try:
                self.app.broker.release_lease(BEAT_LEASE, self.holder)
                log.info("beat %s released the lease", self.holder)
            except Exception as exc:  # it runs out by itself within the lease time
                log.warning("beat %s could not release the lease: %s", self.holder, exc)
        self.scheduler.close()
        self.state.close()

    def load(self) -> list[Entry]:
        """Read the entries now; errors propagate, so a bad schedule stops beat at start."""
        entries = [self._localize(entry) for entry in self.scheduler.load()]
        self.entries = entries
        self._loaded_at = self.clock.monotonic()
        return entries

    def _localize(self, entry: Entry) -> Entry:
        localized = entry.schedule.with_default_tz(self.tz)
        return entry if localized is entry.schedule else dataclasses.replace(
            entry, schedule=localized)

    def _refresh(self) -> None:
        loaded = self._loaded_at
        if loaded is not None and self.clock.monotonic() - loaded < self.scheduler.refresh_interval:
            return
        try:
            self.load()
        except Exception:  # a bad edit must not stop the entries that still work
            self._loaded_at = self.clock.monotonic()
            log.exception("beat could not reload its entries; keeping the previous %d",
                          len(self.entries))

    def _safe_tick(self) -> float:
        try:
            with self._busy:
                return self.tick()
        except Exception as exc:  # the broker may be down: keep trying, never crash-loop
            log.error("beat pass failed: %s; trying again in %.1fs", exc, self.renew_every,
                      exc_info=not isinstance(exc, BrokerError))
            return self.renew_every

    def tick(self) -> float:
        """One pass: hold or seek the lease, send what is due; returns seconds to sleep."""
        if not self._hold_lease():
            return self.renew_every
        self._refresh()  # standbys leave the scheduler's source alone
        now = self.clock.now()
        wakes: list[datetime | None] = []
        try:
            for entry in list(self.entries):
                wakes.append(self._run_entry_safely(entry, now))
        except _PassAborted as abort:
            log.warning("beat %s abandoned a pass: %s", self.holder, abort)
            return _MIN_SLEEP
        self.state.advance(ALIVE_AT, now)
        return self._sleep_for(now, wakes)

    def _sleep_for(self, now: datetime, wakes: Sequence[datetime | None]) -> float:
        # Wake for the next tick, and often enough to renew the lease in time.
        longest = min(self.max_interval, self.renew_every)
        due = [wake for wake in wakes if wake is not None]
        if not due:
            return longest
        return max(_MIN_SLEEP, min(longest, (min(due) - now).total_seconds()))

    # -- the lease -----------------------------------------------------------
    def _hold_lease(self) -> bool:
        """Take or renew the lease when it is due for renewal; True while this beat leads."""
        started = self.clock.monotonic()
        held_for = started - self._renewed_at
        if self.is_leader and held_for < self.renew_every / 2:
            return True
        if not self.app.broker.acquire_lease(BEAT_LEASE, self.holder, self.lease_ttl):
            if self.is_leader:
                log.warning("beat %s lost the lease to %s; standing by", self.holder,
                            self.app.broker.lease_holder(BEAT_LEASE))
            self.is_leader = False
            return False
        # Measured from before the call: the broker's expiry can only be later.
        self._renewed_at = started
        if not self.is_leader or held_for >= self.lease_ttl:
            self._begin_term()
        self.is_leader = True
        return True

    def _ensure_lease(self) -> None:
        """Before each send: renew when due; give up the pass if the lease may have lapsed."""
        held_for = self.clock.monotonic() - self._renewed_at
        if held_for >= self.lease_ttl:
            raise _PassAborted(f"{held_for:.1f}s since the lease was last renewed")
        if held_for >= self.renew_every and not self._hold_lease():
            raise _PassAborted("the lease is held by another beat")

    def _begin_term(self) -> None:
        """Start leading: decide whether beat was down long enough to be an outage."""
        now = self.clock.now()
        alive = self.state.get(ALIVE_AT)
        cutoff = self.state.get(CUTOFF)
        if alive is None or now - alive > self.window:
            since = "before" if alive is None else f"since {alive.isoformat()}"
            log.info("beat %s leads; no beat ran %s, so ticks missed until now follow "
                     "beat_missed_policy=%r", self.holder, since, self.policy)
            self.state.advance(CUTOFF, now)
            cutoff = now if cutoff is None else max(cutoff, now)
        else:
            log.info("beat %s leads; the last pass of a beat was %.1fs ago", self.holder,
                     (now - alive).total_seconds())
        # Written at once: a leader that dies during its first pass must not
        # make the next one mistake a failover for an outage.
        self.state.advance(ALIVE_AT, now)
        self.state.set_note(SCHEDULER, scheduler_path(self.scheduler))
        self._cutoff = cutoff
        self._reported.clear()
        self._loaded_at = None  # a standby's entries may be stale: read them again

    # -- entries -------------------------------------------------------------
    def _run_entry_safely(self, entry: Entry, now: datetime) -> datetime | None:
        try:
            return self._run_entry(entry, now)
        except (_PassAborted, BrokerError):
            raise  # these concern every entry: end the pass
        except Exception:  # one broken entry must not hold up the others
            log.exception("beat entry %r failed; trying again next pass", entry.name)
            return None

    def _run_entry(self, entry: Entry, now: datetime) -> datetime | None:
        if not entry.enabled:
            return None
        last = self.scheduler.last_run(entry.name)
        plan = plan_ticks(
            entry.schedule, last=last, now=now, cutoff=self._cutoff, window=self.window,
            policy=self.policy, start_time=entry.start_time, expires=entry.expires,
        )
        if plan.dropped:
            self._report_dropped(entry, last)
        ticks = plan.send[-1:] if entry.one_off else plan.send
        for tick in ticks:
            self._ensure_lease()
            self._send(entry, tick)
            self.scheduler.record_run(entry, tick)
        return None if entry.one_off and ticks else plan.wake

    def _report_dropped(self, entry: Entry, last: datetime | None) -> None:
        # Once per entry and history: under "skip" the same plan recurs every pass.
        if (entry.name, last) in self._reported:
            return
        self._reported.add((entry.name, last))
        what = {"once": "collapsed into one run", "skip": "skipped",
                "all": f"beyond the latest {MAX_CATCH_UP} skipped"}[self.policy]
        log.warning("beat entry %r: ticks missed since %s (no beat ran, or the entry was "
                    "off) are %s (beat_missed_policy=%r)", entry.name,
                    "never" if last is None else last.isoformat(), what, self.policy)

    def _send(self, entry: Entry, tick: datetime) -> None:
        key = tick_key(entry.name, tick)
        options = dict(entry.options)
        headers = dict(options.pop("headers", None) or {})
        headers.update(beat_entry=entry.name, beat_tick=_utc(tick).isoformat(),
                       beat_by=self.holder)
        try:
            self.app.send_task(
                entry.task, entry.args, entry.kwargs, task_id=task_id_for(key),
                idempotency_key=key, idempotency_ttl=key_ttl(entry.schedule, tick, self.window),
                headers=headers, **options,
            )
        except BrokerError:
            raise  # not recorded: the next pass sends it again, and the key dedupes
        except Exception as exc:  # it would fail the same way every pass
            log.error("beat entry %r: cannot send %s for tick %s: %s; skipping this tick",
                      entry.name, entry.task, key, exc)
            return
        log.info("beat sent %s (%s) for tick %s", entry.name, entry.task,
                 _utc(tick).isoformat())


def _zone_setting(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ConfigurationError(
            f"timezone {name!r} is not a known IANA time zone (e.g. 'Asia/Kathmandu')") from exc


# --------------------------------------------------------------------------- embedding


def run_embedded(app: Conveyor, scheduler: str | None = None) -> Beat:
    """Run beat in a daemon thread of this process (``worker -B``), under the same lease.

    Entries are loaded here, in the caller's thread, so a bad schedule stops
    the worker at start.  The thread stops, and releases the lease, when the
    process exits normally.
    """
    app.finalize()
    beat = Beat(app, load_scheduler(app, scheduler))
    beat.load()
    beat.thread = threading.Thread(target=beat.run, name="conveyor-beat", daemon=True)
    # A prefork pool forks children while beat runs: each fork waits for the
    # pass in progress to end (see Beat._busy).  Registered for good; a
    # stopped beat's lock is always free.
    os.register_at_fork(before=beat._busy.acquire, after_in_parent=beat._busy.release,
                        after_in_child=beat._busy.release)
    beat.thread.start()
    pid = os.getpid()

    def stop_at_exit() -> None:
        if os.getpid() == pid:  # not in a forked pool child, which has no beat thread
            beat.shutdown(timeout=5.0)

    atexit.register(stop_at_exit)
    return beat


# --------------------------------------------------------------------------- status


def scheduler_path(scheduler: Scheduler) -> str:
    """``module:Class``, the form ``--scheduler`` takes."""
    kind = type(scheduler)
    return f"{kind.__module__}:{kind.__qualname__}"


def beat_status(app: Conveyor, scheduler: Scheduler | None = None,
                now: datetime | None = None) -> dict[str, Any]:
    """What the monitor's schedules page shows: the lease holder and each entry's runs.

    The entries are those of the scheduler the last leading beat ran (it
    notes its path in the beat state), so a beat started with
    ``--scheduler`` is reported as it runs, not as the settings would start
    it; before any beat ran, the configured one.  JSON-ready: times are ISO
    8601 strings in UTC.  Pass a long-lived ``scheduler`` to avoid opening
    one per call.
    """
    state = open_beat_state(app)
    try:
        running = state.note(SCHEDULER)
        sched = load_scheduler(app, running) if scheduler is None else scheduler
    except BaseException:
        state.close()
        raise
    try:
        now = _utc(now or datetime.now(UTC))
        cutoff = state.get(CUTOFF)
        alive = state.get(ALIVE_AT)
        return {
            "lease": BEAT_LEASE,
            "holder": app.broker.lease_holder(BEAT_LEASE),
            "alive_at": _iso(alive),
            "cutoff": _iso(cutoff),
            "timezone": app.conf.timezone,
            "missed_policy": app.conf.beat_missed_policy,
            "lease_timeout": app.conf.beat_lease_timeout,
            "scheduler": type(sched).__name__,
            "scheduler_path": scheduler_path(sched),
            "scheduler_from": "running beat" if running else "settings",
            "entries": [_entry_status(app, sched, entry, now, cutoff) for entry in sched.load()],
        }
    finally:
        state.close()
        if scheduler is None:
            sched.close()


def _entry_status(app: Conveyor, sched: Scheduler, entry: Entry, now: datetime,
                  cutoff: datetime | None) -> dict[str, Any]:
    schedule = entry.schedule.with_default_tz(_zone_setting(app.conf.timezone))
    last = sched.last_run(entry.name)
    plan = plan_ticks(schedule, last=last, now=now, cutoff=cutoff,
                      window=failover_window(app.conf), policy=app.conf.beat_missed_policy,
                      start_time=entry.start_time, expires=entry.expires)
    upcoming = plan.send[0] if plan.send else plan.wake
    # Not part of the plug-in interface; both built-in schedulers offer it.
    counter = getattr(sched, "total_run_count", None)
    count = counter(entry.name) if callable(counter) else None
    return {
        "name": entry.name,
        "task": entry.task,
        "schedule": repr(schedule),
        "args": [_plain(v) for v in entry.args],
        "kwargs": {k: _plain(v) for k, v in entry.kwargs.items()},
        "options": {k: _plain(v) for k, v in entry.options.items()},
        "enabled": entry.enabled,
        "one_off": entry.one_off,
        "last_run_at": _iso(last),
        "total_run_count": count,
        "next_run": _iso(upcoming) if entry.enabled else None,
        "due": bool(plan.send) and entry.enabled,
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).isoformat()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)
