"""Beat moved into the ``conveyor/beat/`` package; every old import path still works.

The docs, README and examples show ``conveyor.schedules``, ``conveyor.scheduler``
and ``conveyor.beat.<name>``; projects, tests and stored settings
(``beat_scheduler = "conveyor.beat:SettingsScheduler"``) use the names the
single modules had.  The first test reads the documentation itself, so a page
that shows a path the code no longer has fails here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor._config import load_object

ROOT = Path(__file__).resolve().parents[2]
_OLD = r"conveyor\.(?:beat|schedules|scheduler|beat_state)\b[\w.]*"
_FROM_IMPORT = re.compile(rf"from ({_OLD}) import ([\w, ]+)")
_DOTTED = re.compile(rf"`({_OLD})[`(]")

# The names each old module offered (its ``__all__`` and what tests and stored
# settings import from it), before the package existed.
OLD_NAMES = {
    "conveyor.beat": [
        "BEAT_LEASE", "MAX_CATCH_UP", "Beat", "SettingsScheduler", "TickPlan", "beat_status",
        "load_scheduler", "plan_ticks", "run_embedded", "task_id_for", "tick_key",
        "Entry", "Scheduler", "ENTRY_OPTIONS", "POLICIES", "KEY_TTL_MIN", "KEY_TTL_MAX",
        "entry_from_settings", "failover_window", "key_ttl", "scheduler_path",
        "default_holder", "Clock", "SystemClock",
    ],
    "conveyor.beat_state": [
        "ALIVE_AT", "CUTOFF", "SCHEDULER", "BeatState", "EntryRuns", "open_beat_state",
        "MemoryBeatState", "SQLiteBeatState", "RedisBeatState", "reset_memory_beat_state",
        "to_micros", "from_micros",
    ],
    "conveyor.scheduler": ["Entry", "Scheduler"],
    "conveyor.schedules": [
        "CronField", "Schedule", "ScheduleError", "TimeZone", "as_schedule", "crontab",
        "crontab_parser", "schedule", "schedule_from_dict", "solar",
    ],
}


def _resolve(dotted: str) -> object:
    """Import the longest importable module prefix of ``dotted``, then walk attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ModuleNotFoundError(dotted)


def _documented() -> list[str]:
    paths: set[str] = set()
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").rglob("*.py")]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for module, names in _FROM_IMPORT.findall(text):
            paths.update(f"{module}.{n.strip()}" for n in names.split(",") if n.strip())
        paths.update(_DOTTED.findall(text))
    return sorted(paths)


def test_every_documented_beat_path_imports() -> None:
    documented = _documented()
    # The pages show at least these; fewer means the scan above stopped finding them.
    assert {"conveyor.schedules.crontab", "conveyor.scheduler.Scheduler",
            "conveyor.beat.beat_status", "conveyor.beat.run_embedded"} <= set(documented)
    missing = []
    for path in documented:
        try:
            _resolve(path)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{path}: {exc}")
    assert not missing, missing


@pytest.mark.parametrize("module", sorted(OLD_NAMES))
def test_old_module_names_are_the_package_objects(module: str) -> None:
    old = importlib.import_module(module)
    absent = [name for name in OLD_NAMES[module] if not hasattr(old, name)]
    assert not absent, f"{module} lost {absent}"
    # Re-exported, not copied: isinstance and identity checks hold across paths.
    for name in OLD_NAMES[module]:
        value = getattr(old, name)
        if isinstance(value, type) or callable(value):
            home = importlib.import_module(value.__module__)
            assert getattr(home, value.__name__) is value


def test_one_crontab_class_whichever_path() -> None:
    from conveyor.beat.scheduler import Scheduler
    from conveyor.beat.schedules import clocked, crontab
    from conveyor.scheduler import Scheduler as OldScheduler
    from conveyor.schedules import clocked as old_clocked
    from conveyor.schedules import crontab as old_crontab

    assert old_crontab is crontab and old_clocked is clocked and OldScheduler is Scheduler


def test_stored_scheduler_paths_load_and_the_default_keeps_its_path() -> None:
    """A beat of this release notes ``conveyor.beat:SettingsScheduler`` for the monitor,
    the path any release imports, so a mixed fleet's monitor can load it."""
    from conveyor.beat import Scheduler, SettingsScheduler, scheduler_path

    assert load_object("conveyor.beat:SettingsScheduler") is SettingsScheduler
    assert load_object("conveyor.beat:Scheduler") is Scheduler
    app = Conveyor("paths", broker="memory://beat-paths", set_as_current=False)
    scheduler = SettingsScheduler(app)
    try:
        assert scheduler_path(scheduler) == "conveyor.beat:SettingsScheduler"
    finally:
        scheduler.close()
