"""The beat loop: lead (hold the leader lease and send) or stand by.

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

Which ticks to send is ``ticks.py``; run history lives beside the broker's
data (``state/``); entries come from a scheduler (``scheduler.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conveyor import signals
from conveyor.beat.loading import scheduler_path
from conveyor.beat.scheduler import Entry, Scheduler
from conveyor.beat.settings_scheduler import SettingsScheduler
from conveyor.beat.state import ALIVE_AT, CUTOFF, SCHEDULER, BeatState, open_beat_state
from conveyor.beat.ticks import (
    MAX_CATCH_UP,
    POLICIES,
    UTC,
    failover_window,
    in_utc,
    key_ttl,
    plan_ticks,
    task_id_for,
    tick_key,
)
from conveyor.exceptions import BrokerError, ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["BEAT_LEASE", "Beat", "Clock", "SystemClock", "default_holder", "zone_setting"]

log = logging.getLogger("conveyor.beat")

#: The broker lease beat processes compete for.
BEAT_LEASE = "beat"

_MIN_SLEEP = 0.005


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
        self.tz = zone_setting(conf.timezone)
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
            count = len(self.entries)
            log.info("beat %s starting: %d %s, scheduler %s, lease %gs, missed-tick "
                     "policy %r, time zone %s", self.holder, count,
                     "entry" if count == 1 else "entries",
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
        headers.update(beat_entry=entry.name, beat_tick=in_utc(tick).isoformat(),
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
                 in_utc(tick).isoformat())


def zone_setting(name: str) -> ZoneInfo:
    """The ``timezone`` setting as a zone; ConfigurationError names a zone that is not one."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ConfigurationError(
            f"timezone {name!r} is not a known IANA time zone (e.g. 'Asia/Kathmandu')") from exc
