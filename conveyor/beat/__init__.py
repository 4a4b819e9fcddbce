"""Beat: send periodic tasks, each tick exactly once, however many beat processes run.

One idea per module:

* ``service.py``: ``Beat``, the loop that holds the leader lease and sends
  (the two fences of exactly once are in its docstring);
* ``ticks.py``: which ticks of an entry to send (``plan_ticks``, the
  missed-tick policy) and each tick's identity (``tick_key``);
* ``scheduler.py``: the plug-in interface (``Entry``, ``Scheduler``);
  ``settings_scheduler.py``: the default one, from ``beat_schedule``;
  ``loading.py``: which one ``--scheduler`` names;
* ``state/``: the run history beside the broker, one module per store;
* ``schedules/``: the kinds of schedule (interval, crontab, solar, clocked);
* ``embedded.py``: ``worker -B``; ``status.py``: what the monitor shows;
  ``cli.py``: ``conveyor beat``.

``conveyor.beat`` keeps the names it had as one module, so imports written
for it keep working; ``conveyor.schedules``, ``conveyor.scheduler`` and
``conveyor.beat_state`` re-export their packages' names likewise.
"""

from __future__ import annotations

from conveyor.beat.embedded import run_embedded
from conveyor.beat.loading import load_scheduler, scheduler_path
from conveyor.beat.scheduler import Entry, Scheduler
from conveyor.beat.service import BEAT_LEASE, Beat, Clock, SystemClock, default_holder
from conveyor.beat.settings_scheduler import ENTRY_OPTIONS, SettingsScheduler, entry_from_settings
from conveyor.beat.status import beat_status
from conveyor.beat.ticks import (
    KEY_TTL_MAX,
    KEY_TTL_MIN,
    MAX_CATCH_UP,
    POLICIES,
    TickPlan,
    failover_window,
    key_ttl,
    plan_ticks,
    task_id_for,
    tick_key,
)

__all__ = [
    "BEAT_LEASE",
    "ENTRY_OPTIONS",
    "KEY_TTL_MAX",
    "KEY_TTL_MIN",
    "MAX_CATCH_UP",
    "POLICIES",
    "Beat",
    "Clock",
    "Entry",
    "Scheduler",
    "SettingsScheduler",
    "SystemClock",
    "TickPlan",
    "beat_status",
    "default_holder",
    "entry_from_settings",
    "failover_window",
    "key_ttl",
    "load_scheduler",
    "plan_ticks",
    "run_embedded",
    "scheduler_path",
    "task_id_for",
    "tick_key",
]
