"""Settings: one typed object, Celery's lower-case names, loud about mistakes.

``Settings`` is a dataclass; every field is a setting with its type and
default.  Loading goes through :meth:`Settings.update`, which rejects keys it
does not know (suggesting the closest known one) and values of the wrong
type, naming the key and where it came from.  Celery settings that Conveyor
does not need are accepted with a warning instead of an error, so a settings
file moved over from Celery loads on day one.

Nothing here reads the environment at import time; ``from_env`` is called
explicitly (the CLI does).
"""

from __future__ import annotations

import difflib
import importlib
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, Union, get_type_hints

from conveyor.exceptions import ConfigurationError

DEFAULT_NAMESPACE = "CONVEYOR"
DEFAULT_BROKER_URL = "sqlite:///conveyor.db"


class ConfigWarning(UserWarning):
    """A setting was accepted but has no effect in Conveyor."""


# Celery settings that have no meaning here: accepted, warned about, ignored.
IGNORED_CELERY_SETTINGS: dict[str, str] = {
    "enable_utc": "times are always stored in UTC; `timezone` sets the schedule zone",
    "result_extended": "task name, args and worker are always stored with results",
    "worker_send_task_events": "events are always written (cheaply) for the monitor",
    "task_send_sent_event": "events are always written (cheaply) for the monitor",
    "broker_connection_retry_on_startup": "workers always retry with capped backoff",
    "broker_connection_retry": "workers always retry with capped backoff",
    "broker_pool_limit": "connection pools are sized automatically",
    "worker_hijack_root_logger": "use -l/--loglevel; the root logger is left alone",
    "task_always_eager": "there is no eager mode; use broker_url='memory://' in tests",
    "task_eager_propagates": "there is no eager mode; use broker_url='memory://' in tests",
    "result_persistent": "results persist as the result store does",
    "task_create_missing_queues": "queues are always created on first use",
    "worker_cancel_long_running_tasks_on_connection_loss": "leases make this unnecessary",
    "broker_heartbeat": "connections are health-checked by the client",
    "task_default_exchange": "there are no exchanges; queues are addressed directly",
    "task_default_exchange_type": "there are no exchanges; queues are addressed directly",
    "task_default_routing_key": "there are no routing keys; use task_routes or queue=",
    "result_chord_join_timeout": "chords join atomically; nothing polls",
    "worker_lost_wait": "the supervisor notices lost children at once",
}

# Celery settings whose meaning Conveyor keeps under its one name for it.
RENAMED_CELERY_SETTINGS: dict[str, str] = {
    "include": "imports",
}


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


@dataclass
class Settings:
    """Every setting Conveyor reads, with its default.  See docs/settings.md."""

    # Broker and results
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str | None = None  # None: store results beside the broker
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    broker_lease_timeout: float = 30.0
    broker_connection_timeout: float = 4.0
    broker_connection_max_retries: int | None = None
    result_expires: float = 86400.0
    result_max_bytes: int = 8 * 1024 * 1024
    result_warn_bytes: int = 1024 * 1024
    # Serialization
    accept_content: list[str] = field(default_factory=lambda: ["json"])
    result_accept_content: list[str] | None = None
    task_serializer: str = "json"
    result_serializer: str = "json"
    # Time
    timezone: str = "UTC"
    # Tasks
    task_soft_time_limit: float | None = None
    task_time_limit: float | None = None
    task_acks_late: bool = True
    task_acks_on_failure_or_timeout: bool = True
    task_acks_on_failure: bool | None = None  # None: task_acks_on_failure_or_timeout
    task_acks_on_timeout: bool | None = None  # None: task_acks_on_failure_or_timeout
    task_reject_on_worker_lost: bool = True
    task_max_deliveries: int = 5
    task_message_max_bytes: int | None = 16 * 1024 * 1024  # refused at send, dead on receipt
    task_default_retry_delay: float = 180.0
    task_default_max_retries: int = 3
    task_ignore_result: bool = False
    task_track_started: bool = False  # costs a write per task; heartbeats list running ones
    task_default_rate_limit: str | None = None  # per worker, as Celery's
    worker_disable_rate_limits: bool = False  # per-worker limits only; global ones stay
    queue_global_rate_limits: dict[str, Any] = field(default_factory=dict)  # shared by workers
    task_idempotency_ttl: float | None = None  # None: result_expires
    task_enqueue_on_commit: bool = False
    # Modules imported when the app is finalized (worker/beat start)
    imports: list[str] = field(default_factory=list)
    # Routing
    task_routes: Any = None
    task_default_queue: str = "default"
    task_default_priority: int = 0
    task_queues: list[str] | None = None
    # Worker
    worker_concurrency: int | None = None
    worker_pool: str = "prefork"
    worker_prefetch_multiplier: int = 4
    worker_max_tasks_per_child: int | None = None
    worker_max_memory_per_child: int | None = None  # KiB, as in Celery
    worker_shutdown_timeout: float = 60.0
    worker_heartbeat_interval: float = 2.0
    worker_log_format: str | None = None
    worker_task_log_format: str | None = None
    # Beat
    beat_schedule: dict[str, Any] = field(default_factory=dict)
    beat_scheduler: str | None = None
    beat_lease_timeout: float = 10.0
    beat_max_loop_interval: float = 5.0
    beat_missed_policy: str = "once"
    # Monitor
    monitor_basic_auth: list[str] = field(default_factory=list)
    monitor_readonly_auth: list[str] = field(default_factory=list)
    monitor_retention: float = 86400.0
    # Events
    events_enabled: bool = True

    @classmethod
    def names(cls) -> list[str]:
        """Every known setting name."""
        return [f.name for f in fields(cls)]

    def update(self, values: Mapping[str, Any], source: str = "settings") -> None:
        """Validate and apply ``values``; unknown keys raise, ignored ones warn."""
        problems: list[str] = []
        for key, value in values.items():
            problem = self._apply(key, value, source)
            if problem:
                problems.append(problem)
        if problems:
            raise ConfigurationError("; ".join(problems))

    def _apply(self, key: str, value: Any, source: str) -> str | None:
        if key in IGNORED_CELERY_SETTINGS:
            warnings.warn(
                f"{source}: {key} is ignored by Conveyor ({IGNORED_CELERY_SETTINGS[key]})",
                ConfigWarning,
                stacklevel=4,
            )
            return None
        if key in RENAMED_CELERY_SETTINGS:
            return (f"{source}: {key} is called {RENAMED_CELERY_SETTINGS[key]} in Conveyor "
                    f"(same meaning); rename it")
        if key not in _HINTS:
            return _unknown_key_message(key, source)
        try:
            setattr(self, key, _coerce(key, value))
        except (TypeError, ValueError) as exc:
            return f"{source}: {key} {exc}"
        return None

    def as_dict(self) -> dict[str, Any]:
        """A plain dict copy, for reports."""
        return {name: getattr(self, name) for name in self.names()}

    @property
    def result_url(self) -> str:
        """Where results live: ``result_backend``, or beside the broker."""
        return self.result_backend or self.broker_url

    @property
    def idempotency_ttl(self) -> float:
        """How long an idempotency key blocks repeats."""
        if self.task_idempotency_ttl is not None:
            return self.task_idempotency_ttl
        return self.result_expires


_HINTS: dict[str, Any] = get_type_hints(Settings)
_SECONDS = {
    "result_expires",
    "broker_lease_timeout",
    "broker_connection_timeout",
    "task_soft_time_limit",
    "task_time_limit",
    "task_default_retry_delay",
    "task_idempotency_ttl",
    "worker_shutdown_timeout",
    "worker_heartbeat_interval",
    "beat_lease_timeout",
    "beat_max_loop_interval",
    "monitor_retention",
}
_CHOICES = {
    "worker_pool": ("prefork", "threads", "async", "solo"),
    "beat_missed_policy": ("once", "skip", "all"),
}


def _unknown_key_message(key: str, source: str) -> str:
    close = difflib.get_close_matches(key, list(_HINTS) + list(IGNORED_CELERY_SETTINGS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{source}: unknown setting {key!r}{hint}"


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the field's type; convert the few safe cases."""
    if value is None:
        if _allows_none(_HINTS[key]):
            return None
        raise TypeError("must not be None")
    if key in _SECONDS:
        if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
            raise TypeError(f"must be seconds (a number or timedelta), got {value!r}")
        return _seconds(value)
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    if key in ("monitor_basic_auth", "monitor_readonly_auth") and isinstance(value, str):
        return [item for item in value.split(",") if item]
    return _check_type(_HINTS[key], value)


def _allows_none(hint: Any) -> bool:
    return hint is Any or type(None) in getattr(hint, "__args__", ())


def _check_type(hint: Any, value: Any) -> Any:
    if hint is Any:
        return value
    # Only a union lists alternatives in __args__; list[str] or dict[str, Any]
    # list their items' types there, and are a list or a dict themselves.
    args = getattr(hint, "__args__", ())
    is_union = bool(args) and getattr(hint, "__origin__", None) in (None, Union)
    options = [a for a in (args if is_union else (hint,)) if a is not type(None)]
    base_types = tuple(getattr(opt, "__origin__", opt) for opt in options)
    if bool in base_types and isinstance(value, bool):
        return value
    if int in base_types and isinstance(value, int) and not isinstance(value, bool):
        return value
    if list in base_types and isinstance(value, (list, tuple)):
        return list(value)
    if dict in base_types and isinstance(value, Mapping):
        return dict(value)
    if str in base_types and isinstance(value, str):
        return value
    expected = " or ".join(t.__name__ for t in base_types)
    raise TypeError(f"must be {expected}, got {type(value).__name__} {value!r}")


def load_object(path: str) -> Any:
    """Import ``"pkg.module:attr"`` or ``"pkg.module"`` (or ``"pkg.module.attr"``)."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        if attr or "." not in module_name:
            raise
        module_name, _, attr = module_name.rpartition(".")
        module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def values_from_object(obj: Any, namespace: str | None) -> dict[str, Any]:
    """Collect settings from a module, an object, or a mapping.

    With a namespace, ``NAMESPACE_BROKER_URL`` becomes ``broker_url`` and other
    attributes are left alone.  Without one, lower-case names are settings,
    skipping modules, classes and functions that a config module imports.
    """
    items = _items(obj)
    if namespace:
        prefix = namespace.rstrip("_").upper() + "_"
        return {
            name[len(prefix):].lower(): value
            for name, value in items
            if name.startswith(prefix) and name.isupper()
        }
    return {
        name: value
        for name, value in items
        if name.islower() and not name.startswith("_") and not _is_code(value)
    }


def _items(obj: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        return list(obj.items())
    # dir() may list names the object refuses (Django's settings.configure()
    # holder lists global_settings' helpers but raises for lower-case names).
    missing = object()
    pairs = ((name, getattr(obj, name, missing)) for name in dir(obj) if not name.startswith("__"))
    return [(name, value) for name, value in pairs if value is not missing]


def _is_code(value: Any) -> bool:
    if type(value).__name__ == "module":
        return True
    return callable(value) and not isinstance(value, (dict, list))


def values_from_env(
    environ: Mapping[str, str] | None = None, prefix: str = "CONVEYOR_"
) -> dict[str, Any]:
    """Read ``CONVEYOR_BROKER_URL`` and friends; only string-friendly settings."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix):].lower()
        if key in _HINTS:
            out[key] = _parse_env_value(key, raw)
    return out


def _parse_env_value(key: str, raw: str) -> Any:
    hint = _HINTS[key]
    base = {getattr(a, "__origin__", a) for a in getattr(hint, "__args__", (hint,))}
    if key in _SECONDS:
        return float(raw)
    if bool in base:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if int in base and raw.strip().lstrip("-").isdigit():
        return int(raw)
    if list in base:
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw
