"""Which scheduler beat runs: ``--scheduler``, else ``beat_scheduler``, else the settings one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from conveyor._config import load_object
from conveyor.beat.scheduler import Scheduler
from conveyor.beat.settings_scheduler import SettingsScheduler
from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["load_scheduler", "scheduler_path"]

log = logging.getLogger("conveyor.beat")

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


def scheduler_path(scheduler: Scheduler) -> str:
    """``module:Class``, the form ``--scheduler`` takes."""
    kind = type(scheduler)
    return f"{kind.__module__}:{kind.__qualname__}"
