"""What the monitor's schedules page shows: the lease holder and each entry's runs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor.beat.loading import load_scheduler, scheduler_path
from conveyor.beat.scheduler import Entry, Scheduler
from conveyor.beat.service import BEAT_LEASE, zone_setting
from conveyor.beat.state import ALIVE_AT, CUTOFF, SCHEDULER, open_beat_state
from conveyor.beat.ticks import UTC, failover_window, in_utc, plan_ticks

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["beat_status"]


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
        now = in_utc(now or datetime.now(UTC))
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
    schedule = entry.schedule.with_default_tz(zone_setting(app.conf.timezone))
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
    return None if moment is None else in_utc(moment).isoformat()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)
