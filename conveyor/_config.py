"""Settings: one typed object, Celery's lower-case names, loud about mistakes.

``Settings`` is a dataclass; every field is a setting with its type, default,
one-line meaning and Celery status (``docs/settings.md`` is generated from
them: ``python -m conveyor._config``).  Every name in Celery 5.x's defaults
table loads: either it is a field here, read by the code with Celery's
meaning, or it is in the one table of names that have no effect here
(:mod:`conveyor._no_effect`), whose set members the worker names in a single
warning at start.  A name in neither is an error that suggests the closest
known one.  Values are type- and range-checked from every source (objects,
mappings, the environment, ``app.conf[...] = v``, ``app.conf.x = v``), and
the error names the key and where it came from.

``app.conf`` is also a mapping, as Celery's is: ``update(mapping, **kw)``,
``conf["x"]``, ``conf["x"] = v``, ``get``, ``setdefault``, ``in``, ``keys()``.

Nothing here reads the environment at import time; ``from_env`` is called
explicitly (the CLI does).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Union, get_type_hints
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor._no_effect import NO_EFFECT
from conveyor._redis_options import connection_options, explicit_prefix
from conveyor.exceptions import ConfigurationError
from conveyor.schemes import is_amqp

DEFAULT_NAMESPACE = "CONVEYOR"
DEFAULT_BROKER_URL = "sqlite:///conveyor.db"
SAME = "same"
CONVEYOR_ONLY = "Conveyor only"


class ConfigWarning(UserWarning):
    """Kept for imports of earlier versions; no-effect settings are now logged once
    when a worker starts (:meth:`Settings.warn_no_effect`)."""


def _doc(doc: str, celery: str = SAME) -> dict[str, str]:
    """A setting's one-line meaning and how it compares with Celery's (for docs/settings.md)."""
    return {"doc": doc, "celery": celery}


_LEASES = "different on purpose: leases replace visibility_timeout (docs/guarantees.md)"


@dataclass
class Settings:
    """Every setting Conveyor reads, with its default.  See docs/settings.md."""

    # Broker and results
    broker_url: str = field(default=DEFAULT_BROKER_URL, metadata=_doc(
        "where messages wait: sqlite:///path, redis://, rediss://, postgresql:// or memory://",
        "different on purpose: SQLite by default, so nothing needs installing"))
    result_backend: str | None = field(default=None, metadata=_doc(
        "where results live; None keeps them beside the broker; also db+sqlite:/// and django-db",
        "different on purpose: None stores results beside the broker"))
    broker_transport_options: dict[str, Any] = field(default_factory=dict, metadata=_doc(
        "options of the broker client (Redis: prefix, socket_timeout, max_connections, ...)",
        "different on purpose: the keys are the client's own; Celery's visibility_timeout and "
        "the like are named as ignored"))
    broker_lease_timeout: float = field(default=30.0, metadata=_doc(
        "seconds a reserved message stays leased; renewed while its task runs",
        CONVEYOR_ONLY))
    broker_connection_timeout: float = field(default=4.0, metadata=_doc(
        "seconds to wait while connecting to a Redis broker (SQLite opens a local file: nothing to "
        "wait on)"))
    broker_connection_retry: bool = field(default=True, metadata=_doc(
        "retry reaching the broker when a worker starts, if broker_connection_retry_on_startup "
        "is None",
        "different on purpose: a running worker always reconnects (guarantee 8), so only the "
        "start is governed"))
    broker_connection_retry_on_startup: bool | None = field(default=None, metadata=_doc(
        "retry reaching the broker when a worker starts; False: fail at once"))
    broker_connection_max_retries: int | None = field(default=None, metadata=_doc(
        "retries at start before the worker gives up; 0 or None: forever",
        "different on purpose: forever by default (Celery: 100); counts retries at start only"))
    broker_use_ssl: bool | dict[str, Any] | None = field(default=False, metadata=_doc(
        "TLS options for a rediss:// broker: ssl_cert_reqs, ssl_ca_certs, ssl_certfile, "
        "ssl_keyfile; with sentinel:// or redis+cluster:// it turns TLS on; for an amqps:// "
        "broker, kombu's keys: ca_certs, certfile, keyfile, cert_reqs, server_hostname, "
        "ciphers",
        "different on purpose: with one server the URL must be rediss:// or amqps://, else "
        "the setting is refused"))
    result_backend_transport_options: dict[str, Any] = field(default_factory=dict, metadata=_doc(
        "options of the Redis result store client (the same keys as the broker's); unset "
        "ones come from the broker's: its prefix always, and all of them beside the broker",
        "different on purpose: the keys are the Redis client's own, as for the broker"))
    result_backend_always_retry: bool = field(default=False, metadata=_doc(
        "retry result-store calls that failed to connect (not the chord failure flag)"))
    result_backend_max_retries: float = field(default=math.inf, metadata=_doc(
        "how many times such a call is retried"))
    result_backend_base_sleep_between_retries_ms: int = field(default=10, metadata=_doc(
        "first backoff between those retries (ms), doubling, with full jitter"))
    result_backend_max_sleep_between_retries_ms: int = field(default=10000, metadata=_doc(
        "cap of that backoff (ms)"))
    redis_backend_use_ssl: bool | dict[str, Any] | None = field(default=None, metadata=_doc(
        "TLS options for a rediss:// result backend (keys as broker_use_ssl); with "
        "sentinel:// or redis+cluster:// it turns TLS on",
        "different on purpose: with one server the URL must be rediss://, else the store "
        "is refused"))
    redis_socket_timeout: float | None = field(default=None, metadata=_doc(
        "socket timeout of the Redis result store; None: 5 s",
        "different on purpose: 5 s by default, not 120 s, so an outage is noticed"))
    redis_socket_connect_timeout: float | None = field(default=None, metadata=_doc(
        "connect timeout of the Redis result store; None: 4 s"))
    redis_max_connections: int | None = field(default=None, metadata=_doc(
        "pool size of the Redis result store client"))
    result_expires: float = field(default=86400.0, metadata=_doc(
        "seconds a stored result is kept"))
    result_max_bytes: int = field(default=8 * 1024 * 1024, metadata=_doc(
        "largest encoded result accepted; a larger one fails the task with a clear error",
        CONVEYOR_ONLY))
    result_warn_bytes: int = field(default=1024 * 1024, metadata=_doc(
        "encoded results above this are logged as a warning",
        CONVEYOR_ONLY))
    # Serialization
    accept_content: list[str] = field(default_factory=lambda: ["json"], metadata=_doc(
        "content types a worker accepts"))
    result_accept_content: list[str] | None = field(default=None, metadata=_doc(
        "content types accepted for results; None: accept_content"))
    task_serializer: str = field(default="json", metadata=_doc(
        "how task arguments are encoded"))
    message_signing_key: str | None = field(default=None, metadata=_doc(
        "HMAC key (16+ bytes): senders sign each message, workers dead-letter unsigned ones "
        "before decoding (docs/security.md); Celery's X.509 security_* settings have no effect",
        CONVEYOR_ONLY))
    message_signing_key_file: str | None = field(default=None, metadata=_doc(
        "a file holding that key (keep it mode 0600)",
        CONVEYOR_ONLY))
    result_serializer: str = field(default="json", metadata=_doc(
        "how results are encoded"))
    # Time
    timezone: str = field(default="UTC", metadata=_doc(
        "the zone crontab schedules are read in"))
    enable_utc: bool = field(default=True, metadata=_doc(
        "naive eta/expires datetimes are read as UTC; False: in `timezone`"))
    # Tasks
    task_soft_time_limit: float | None = field(default=None, metadata=_doc(
        "seconds before SoftTimeLimitExceeded is raised in a task"))
    task_time_limit: float | None = field(default=None, metadata=_doc(
        "seconds before the process running a task is killed and replaced"))
    task_acks_late: bool = field(default=True, metadata=_doc(
        "acknowledge a message after its task finished",
        "different on purpose: late acks by default, so nothing is lost"))
    task_acks_on_failure_or_timeout: bool = field(default=True, metadata=_doc(
        "with late acks: acknowledge failed and timed-out tasks; False dead-letters a failed "
        "task's message and hands a timed-out one back (counted against max_deliveries)"))
    task_acks_on_failure: bool | None = field(default=None, metadata=_doc(
        "the failure half of task_acks_on_failure_or_timeout (Celery 5.6); None: that setting"))
    task_acks_on_timeout: bool | None = field(default=None, metadata=_doc(
        "the hard-time-limit half of task_acks_on_failure_or_timeout (Celery 5.6); None: that "
        "setting"))
    task_reject_on_worker_lost: bool = field(default=True, metadata=_doc(
        "with late acks: hand a task back when its prefork child dies; False records "
        "WorkerLostError and acknowledges it",
        "different on purpose: True by default (Celery: False), so nothing is lost; "
        "task_max_deliveries ends a task that keeps killing its process"))
    task_max_deliveries: int = field(default=5, metadata=_doc(
        "deliveries before a message that keeps killing its process is dead-lettered",
        CONVEYOR_ONLY))
    task_message_max_bytes: int | None = field(default=16 * 1024 * 1024, metadata=_doc(
        "largest message: refused at send, dead-lettered on receipt",
        CONVEYOR_ONLY))
    task_default_retry_delay: float = field(default=180.0, metadata=_doc(
        "default countdown of self.retry()",
        "Celery: the task attribute default_retry_delay"))
    task_default_max_retries: int = field(default=3, metadata=_doc(
        "default max_retries of a task",
        "Celery: the task attribute max_retries"))
    task_ignore_result: bool = field(default=False, metadata=_doc(
        "do not store results of tasks by default"))
    task_store_errors_even_if_ignored: bool = field(default=False, metadata=_doc(
        "store failures of tasks that ignore their result"))
    task_track_started: bool = field(default=False, metadata=_doc(
        "record STARTED when a task starts (a task's track_started option overrides it)"))
    task_default_rate_limit: str | None = field(default=None, metadata=_doc(
        "per-worker rate limit of tasks that set none ('10/s', '100/m', '5/h')"))
    queue_global_rate_limits: dict[str, Any] = field(default_factory=dict, metadata=_doc(
        "queue name -> rate limit shared by every worker ({'emails': '100/m'}); see also the "
        "task option global_rate_limit",
        CONVEYOR_ONLY))
    task_idempotency_ttl: float | None = field(default=None, metadata=_doc(
        "seconds an idempotency key blocks repeats; None: result_expires",
        CONVEYOR_ONLY))
    task_enqueue_on_commit: bool = field(default=False, metadata=_doc(
        "send tasks when the caller's database transaction commits",
        CONVEYOR_ONLY))
    task_always_eager: bool = field(default=False, metadata=_doc(
        "run .delay()/.apply_async() in the caller's process (tests)",
        "different on purpose: arguments and results are still encoded as for the broker"))
    task_eager_propagates: bool = field(default=False, metadata=_doc(
        "an eager task's error is raised from the call",
        "different on purpose: the task's hooks and errbacks run before it is raised"))
    task_store_eager_result: bool = field(default=False, metadata=_doc(
        "eager runs write their results to the result store"))
    # Modules imported when the app is finalized (worker/beat start)
    imports: list[str] = field(default_factory=list, metadata=_doc(
        "modules imported when a worker or beat starts"))
    include: list[str] = field(default_factory=list, metadata=_doc(
        "more modules imported at start, after imports"))
    # Routing
    task_routes: Any = field(default=None, metadata=_doc(
        "which queue a task goes to: dict (glob or regex keys), list, router function or "
        "dotted path"))
    task_default_queue: str = field(default="default", metadata=_doc(
        "the queue of tasks no route names",
        "different on purpose: 'default', not 'celery'"))
    task_default_priority: int | None = field(default=None, metadata=_doc(
        "priority of messages that set none; None: 0, the most urgent (Celery on Redis)"))
    task_inherit_parent_priority: bool = field(default=False, metadata=_doc(
        "a task sent from a running task takes that task's priority"))
    task_queues: Any = field(default=None, metadata=_doc(
        "queues a worker serves when -Q is not given: names, conveyor.Queue or kombu Queue "
        "objects"))
    task_create_missing_queues: bool = field(default=True, metadata=_doc(
        "False: sending to, or consuming, a queue not in task_queues raises QueueNotFound"))
    # Worker
    worker_concurrency: int | None = field(default=None, metadata=_doc(
        "processes or threads per worker; None: CPUs"))
    worker_pool: str = field(default="prefork", metadata=_doc(
        "prefork, threads, async, solo or gevent",
        "different on purpose: gevent only with -P gevent on the command line; no eventlet; "
        "async runs coroutines"))
    worker_prefetch_multiplier: int = field(default=4, metadata=_doc(
        "messages each process reserves ahead",
        "different on purpose: 0 reads as 1 (leases bound what a worker holds)"))
    worker_max_tasks_per_child: int | None = field(default=None, metadata=_doc(
        "tasks before a child is replaced"))
    worker_max_memory_per_child: int | None = field(default=None, metadata=_doc(
        "KiB of resident memory before a child is replaced"))
    worker_disable_rate_limits: bool = field(default=False, metadata=_doc(
        "turn off per-worker rate limits (rate_limit, task_default_rate_limit)",
        "different on purpose: global rate limits (a Conveyor addition) stay on"))
    worker_shutdown_timeout: float = field(default=60.0, metadata=_doc(
        "seconds a warm shutdown waits for running tasks",
        CONVEYOR_ONLY))
    worker_heartbeat_interval: float = field(default=2.0, metadata=_doc(
        "seconds between worker heartbeats (leases, monitor)",
        CONVEYOR_ONLY))
    worker_log_format: str | None = field(default=None, metadata=_doc(
        "log format of the worker and beat",
        "different on purpose: None is Conveyor's format, which names the task id"))
    worker_task_log_format: str | None = field(default=None, metadata=_doc(
        "log format of lines logged through get_task_logger (%(task_name)s, %(task_id)s)",
        "different on purpose: None is the worker's line, which names the task and its id"))
    worker_hijack_root_logger: bool = field(default=True, metadata=_doc(
        "replace the root logger's handlers at start; False leaves them alone"))
    worker_redirect_stdouts: bool = field(default=True, metadata=_doc(
        "log what worker and beat print to stdout and stderr"))
    worker_redirect_stdouts_level: str = field(default="WARNING", metadata=_doc(
        "level of those redirected lines"))
    worker_log_color: bool | None = field(default=None, metadata=_doc(
        "colour log lines by level; None: when stderr is a terminal; False: never"))
    # Beat
    beat_schedule: dict[str, Any] = field(default_factory=dict, metadata=_doc(
        "periodic tasks"))
    beat_scheduler: str | None = field(default=None, metadata=_doc(
        "scheduler class (dotted path)",
        "different on purpose: None is beat's in-broker scheduler"))
    beat_lease_timeout: float = field(default=10.0, metadata=_doc(
        "seconds a beat leader holds its lease; a standby takes over after it",
        CONVEYOR_ONLY))
    beat_max_loop_interval: float = field(default=5.0, metadata=_doc(
        "longest sleep between beat ticks",
        "different on purpose: 5 s by default, so a standby beat notices a lost leader soon"))
    beat_missed_policy: str = field(default="once", metadata=_doc(
        "ticks missed while beat was down: once, skip or all",
        CONVEYOR_ONLY))
    # Monitor
    monitor_basic_auth: list[str] = field(default_factory=list, metadata=_doc(
        "user:password pairs of the monitor",
        CONVEYOR_ONLY))
    monitor_readonly_auth: list[str] = field(default_factory=list, metadata=_doc(
        "user:password pairs with read-only access",
        CONVEYOR_ONLY))
    monitor_retention: float = field(default=86400.0, metadata=_doc(
        "seconds the monitor keeps task events",
        CONVEYOR_ONLY))
    # Events
    events_enabled: bool = field(default=True, metadata=_doc(
        "write task and worker events for the monitor",
        CONVEYOR_ONLY))

    # Bookkeeping, last so that the dataclass's defaults above are in place before it
    # exists (until then an assignment is the dataclass filling in a default).
    _extra: dict[str, Any] = field(  # no-effect names that were set, with their values
        default_factory=dict, init=False, repr=False, compare=False)
    _listeners: list[Callable[[], None]] = field(
        default_factory=list, init=False, repr=False, compare=False)
    _set: set[str] = field(  # every name set after creation
        default_factory=set, init=False, repr=False, compare=False)

    # -- names ------------------------------------------------------------------
    @classmethod
    def names(cls) -> list[str]:
        """Every setting this object holds as a field."""
        return [f.name for f in fields(cls) if not f.name.startswith("_")]

    @classmethod
    def known(cls) -> list[str]:
        """Every name that loads: the fields, then the no-effect names."""
        return [*_FIELDS, *(n for n in NO_EFFECT if n not in _FIELDS)]

    def no_effect_set(self) -> dict[str, str]:
        """No-effect names set to something other than Celery's default, with their
        reasons (for the startup warning: ``task_always_eager = False`` asks for nothing)."""
        named = {name: NO_EFFECT[name].reason for name in sorted(self._set)
                 if name in NO_EFFECT and self[name] != NO_EFFECT[name].default
                 and not self._takes_effect(name)}
        from conveyor.queues import no_effect_reason

        queues = no_effect_reason(self.task_queues, is_amqp(self.broker_url),
                                  self._priorities_honoured())
        if queues:  # the AMQP fields of task_queues that this broker does not use
            named["task_queues"] = queues
        return named

    def _takes_effect(self, name: str) -> bool:
        """A no-effect name that this broker honours: ``task_queue_max_priority`` on
        RabbitMQ's classic queues (ADR 0041)."""
        return name == "task_queue_max_priority" and self._priorities_honoured()

    def _priorities_honoured(self) -> bool:
        """Whether queues honour a maximum priority (``x-max-priority``): only
        RabbitMQ's classic queues do (ADR 0041); elsewhere the startup warning
        names the settings that ask for one."""
        if not is_amqp(self.broker_url):
            return False
        from conveyor._amqp import queue_type_of

        return queue_type_of(self.broker_url, self.broker_transport_options) == "classic"

    def warn_no_effect(self) -> str | None:
        """One warning naming every no-effect setting that was set; None if none was."""
        named = self.no_effect_set()
        if not named:
            return None
        lines = "; ".join(f"{name} ({reason})" for name, reason in named.items())
        text = f"{len(named)} setting(s) have no effect in Conveyor: {lines}"
        logging.getLogger("conveyor.config").warning("%s", text)
        return text

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change (the app drops its cached connections)."""
        self._listeners.append(callback)

    # -- loading ------------------------------------------------------------------
    def update(self, values: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, *,
               source: str = "app.conf", **kwargs: Any) -> None:
        """Validate every value first, then apply them all; problems raise together."""
        pairs = list(values.items() if isinstance(values, Mapping) else values)
        pairs += list(kwargs.items())
        checked: list[tuple[str, Any]] = []
        problems: list[str] = []
        for key, value in pairs:
            try:
                checked.append((key, check_value(key, value)))
            except (TypeError, ValueError) as exc:
                problems.append(f"{source}: {exc}")
        if problems:
            raise ConfigurationError("; ".join(problems))
        for key, value in checked:
            self._store(key, value)
        if checked:
            for callback in self._listeners:
                callback()

    def _store(self, key: str, value: Any) -> None:
        if key in _FIELDS:
            object.__setattr__(self, key, value)
        else:
            self._extra[key] = value
        self._set.add(key)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or "_set" not in self.__dict__:  # bookkeeping, or a default
            object.__setattr__(self, name, value)
            return
        self.update({name: value}, source="app.conf")

    if not TYPE_CHECKING:  # keep mypy strict about field names in Conveyor's own code

        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            if name in NO_EFFECT:
                return self._extra.get(name, NO_EFFECT[name].default)
            raise AttributeError(unknown_key_message(name, "app.conf"))

    # -- the mapping view (Celery's app.conf is a mapping) -----------------------
    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        if key in NO_EFFECT:
            return self._extra.get(key, NO_EFFECT[key].default)
        raise KeyError(unknown_key_message(key, "app.conf"))

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value}, source="app.conf")

    def __contains__(self, key: object) -> bool:
        return key in _FIELDS or key in NO_EFFECT

    def __iter__(self) -> Iterator[str]:
        return iter(self.known())

    def __len__(self) -> int:
        return len(self.known())

    def keys(self) -> list[str]:
        return self.known()

    def values(self) -> list[Any]:
        return [self[key] for key in self.known()]

    def items(self) -> list[tuple[str, Any]]:
        return [(key, self[key]) for key in self.known()]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of a known setting; an unknown name raises (a typo is never None)."""
        return self[key]

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Set ``key`` unless it was set already; return its value."""
        if key not in self:
            raise KeyError(unknown_key_message(key, "app.conf"))
        if key not in self._set:
            self[key] = default
        return self[key]

    def as_dict(self) -> dict[str, Any]:
        """A plain dict copy of the fields, for reports."""
        return {name: getattr(self, name) for name in self.names()}

    # -- derived values -------------------------------------------------------------
    @property
    def result_url(self) -> str:
        """Where results live: ``result_backend``, or beside the broker."""
        return self.result_backend or self.beside_broker_url

    @property
    def beside_broker_url(self) -> str:
        """The broker's URL as the stores kept beside it open it: a PostgreSQL
        broker's ``schema`` transport option written into the URL, so results
        and task events share the broker's schema (they read only the URL)."""
        schema = self.broker_transport_options.get("schema")
        if schema is None or _scheme(self.broker_url) not in ("postgresql", "postgres"):
            return self.broker_url
        parts = urlsplit(self.broker_url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if k != "schema"]
        return urlunsplit(parts._replace(query=urlencode([*query, ("schema", str(schema))])))

    @property
    def idempotency_ttl(self) -> float:
        """How long an idempotency key blocks repeats."""
        if self.task_idempotency_ttl is not None:
            return self.task_idempotency_ttl
        return self.result_expires

    def broker_options(self) -> dict[str, Any]:
        """What the broker client is built with: its transport options, plus the
        connection settings Celery keeps apart (timeout, TLS)."""
        opts = dict(self.broker_transport_options)
        if _is_redis(self.broker_url):
            opts.setdefault("socket_connect_timeout", self.broker_connection_timeout)
        if is_amqp(self.broker_url):
            from conveyor._amqp import amqp_options

            if self._priorities_honoured():  # else: the startup warning names them
                for key, value in self._priority_options().items():
                    opts.setdefault(key, value)  # an explicit transport option wins
            return amqp_options(self.broker_url, opts, self.result_backend, self.broker_use_ssl)
        opts.update(tls_options("broker_use_ssl", self.broker_use_ssl, self.broker_url))
        return opts

    def _priority_options(self) -> dict[str, Any]:
        """Celery's maxima as the RabbitMQ broker's options: ``task_queue_max_priority``
        as ``max_priority``, and each ``task_queues`` entry's own maximum as
        ``queue_max_priority``, which wins for that queue (``_amqp.max_priority_of``),
        as a kombu ``Queue``'s own ``x-max-priority`` does in Celery."""
        from conveyor.queues import own_max_priorities

        found: dict[str, Any] = {}
        if self["task_queue_max_priority"] is not None:  # 0 too: refused by the broker
            found["max_priority"] = self["task_queue_max_priority"]
        own = own_max_priorities(self.task_queues)
        if own:
            found["queue_max_priority"] = own
        return found

    def result_options(self) -> dict[str, Any]:
        """What the result store client is built with (Celery's redis_* settings).

        With a Redis broker, one key prefix names everything the app keeps:
        a Redis result store takes the broker's ``prefix`` unless
        ``result_backend_transport_options`` or its URL sets one.  Results
        kept beside the broker (no ``result_backend``) take all of the
        broker's connection options too (TLS, unless ``redis_backend_use_ssl``
        says otherwise; timeouts; Sentinel's ``master_name`` …), with the
        result settings winning where both are set.  The event store at the
        same URL is built with the same options (``conveyor._events.store_for``).
        """
        url = self.result_url
        opts = dict(self.result_backend_transport_options)
        if _is_redis(url):
            for option, name in (("socket_timeout", "redis_socket_timeout"),
                                 ("socket_connect_timeout", "redis_socket_connect_timeout"),
                                 ("max_connections", "redis_max_connections")):
                if getattr(self, name) is not None:
                    opts.setdefault(option, getattr(self, name))
        key, tls = "redis_backend_use_ssl", self.redis_backend_use_ssl
        if self.result_backend is None and not tls:
            key, tls = "broker_use_ssl", self.broker_use_ssl
        opts.update(tls_options(key, tls, url))
        if _is_redis(url) and _is_redis(self.broker_url):
            opts = {**self._from_the_broker(url, own_tls=key == "redis_backend_use_ssl"), **opts}
        return opts

    def _from_the_broker(self, url: str, own_tls: bool) -> dict[str, Any]:
        """The broker's options a Redis result store at ``url`` shares (see
        :meth:`result_options`)."""
        broker = connection_options(self.broker_options())
        shared: dict[str, Any] = {}
        if self.result_backend is None:  # the same server: the same connection
            shared = {k: v for k, v in broker.items()
                      if not (own_tls and k.startswith("ssl_"))}
        if explicit_prefix(url, self.result_backend_transport_options) is not None:
            shared.pop("prefix", None)  # the URL's or the options' own wins
        else:
            prefix = explicit_prefix(self.broker_url, broker)
            if prefix is not None:
                shared["prefix"] = prefix
        return shared

    def result_retry(self) -> tuple[float, float, float] | None:
        """(max retries, first sleep s, max sleep s) when result-store calls retry."""
        if not self.result_backend_always_retry:
            return None
        return (self.result_backend_max_retries,
                self.result_backend_base_sleep_between_retries_ms / 1000,
                self.result_backend_max_sleep_between_retries_ms / 1000)


_HINTS: dict[str, Any] = get_type_hints(Settings)
_FIELDS: dict[str, Field[Any]] = {f.name: f for f in fields(Settings) if f.name[0] != "_"}
_SECONDS = {
    "result_expires", "broker_lease_timeout", "broker_connection_timeout",
    "task_soft_time_limit", "task_time_limit", "task_default_retry_delay",
    "task_idempotency_ttl", "worker_shutdown_timeout", "worker_heartbeat_interval",
    "beat_lease_timeout", "beat_max_loop_interval", "monitor_retention",
    "redis_socket_timeout", "redis_socket_connect_timeout",
}
# Values that must be above zero; every other number must be zero or more.
_POSITIVE = {
    "broker_lease_timeout", "broker_connection_timeout", "worker_heartbeat_interval",
    "beat_lease_timeout", "beat_max_loop_interval", "worker_concurrency",
    "worker_max_tasks_per_child", "worker_max_memory_per_child", "task_max_deliveries",
    "task_message_max_bytes", "result_max_bytes", "redis_max_connections",
    "redis_socket_timeout", "redis_socket_connect_timeout",
}
_CHOICES = {
    "worker_pool": ("prefork", "threads", "async", "solo", "gevent", "eventlet"),
    "beat_missed_policy": ("once", "skip", "all"),
}
_TLS_KEYS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _close_to_a_setting(key: str) -> bool:
    import difflib

    return bool(difflib.get_close_matches(key, Settings.known(), n=1, cutoff=0.9))


def unknown_key_message(key: str, source: str | None = None) -> str:
    """``source: unknown setting 'x' (did you mean y?)``, for every entry point."""
    import difflib  # only for a mistyped key: kept out of every worker process

    close = difflib.get_close_matches(key, Settings.known(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    where = f"{source}: " if source else ""
    return f"{where}unknown setting {key!r}{hint}"


def check_value(key: str, value: Any) -> Any:
    """``value`` checked (and converted where safe) for setting ``key``.

    Raises ValueError or TypeError with a message that starts with the key.
    """
    if key not in _FIELDS and key not in NO_EFFECT:
        raise ValueError(unknown_key_message(key))
    try:
        if key in _FIELDS:
            return _coerce(key, value)
        return _coerce_kind(NO_EFFECT[key].kind, value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{key} {exc}") from None


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the field's type and range."""
    if value is None:
        if _allows_none(_HINTS[key]):
            return None
        raise TypeError("must not be None")
    if key in _SECONDS:
        if key == "beat_max_loop_interval" and _seconds(value) == 0:
            return Settings.beat_max_loop_interval  # Celery's 0: "the scheduler's default"
        return _number(_seconds(value), key in _POSITIVE)
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    if key == "task_queues":
        from conveyor.queues import parse_queues

        return parse_queues(value)
    if key in ("monitor_basic_auth", "monitor_readonly_auth") and isinstance(value, str):
        return [item for item in value.split(",") if item]
    checked = _check_type(_HINTS[key], value)
    if isinstance(checked, (int, float)) and not isinstance(checked, bool):
        return _number(checked, key in _POSITIVE)
    return checked


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"must be seconds (a number or timedelta), got {value!r}")
    return float(value)


def _number(value: float, positive: bool) -> Any:
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("must be a number, got NaN")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"must be {'above' if positive else 'at least'} 0, got {value!r}")
    return value


def _coerce_kind(kind: str, value: Any) -> Any:
    """Check a no-effect setting's value against the kind Celery expects."""
    if value is None or kind == "any":
        return value
    types: dict[str, tuple[type, ...]] = {
        "bool": (bool,), "str": (str,), "dict": (Mapping,), "list": (list, tuple, set),
        "int": (int,), "float": (int, float, timedelta),
    }
    if not isinstance(value, types[kind]) or (kind in ("int", "float") and
                                              isinstance(value, bool)):
        raise TypeError(f"must be {kind}, got {type(value).__name__} {value!r}")
    if kind == "float":  # durations and sizes: Celery's ints (ports, -1 for "off") may be negative
        _number(_seconds(value), positive=False)
    return value


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
    if isinstance(value, bool):
        if bool in base_types:
            return value
    elif int in base_types and isinstance(value, int):
        return value
    elif float in base_types and isinstance(value, (int, float)):
        return float(value)
    if list in base_types and isinstance(value, (list, tuple)):
        return list(value)
    if dict in base_types and isinstance(value, Mapping):
        return dict(value)
    if str in base_types and isinstance(value, str):
        return value
    expected = " or ".join(t.__name__ for t in base_types)
    raise TypeError(f"must be {expected}, got {type(value).__name__} {value!r}")


# -- client options ---------------------------------------------------------------
def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else url


def _is_redis(url: str) -> bool:
    return _scheme(url) in ("redis", "rediss", "unix", "sentinel", "redis+cluster")


def tls_options(key: str, value: bool | dict[str, Any] | None, url: str) -> dict[str, Any]:
    """Celery's ``broker_use_ssl``/``redis_backend_use_ssl`` as Redis client options.

    Celery's Redis transport turns TLS on when these are set.  For one server
    the URL says so here (``rediss://``), and a TLS setting with ``redis://``
    is refused rather than ignored; for a Sentinel master or a cluster's
    nodes, which have no TLS scheme, the setting turns TLS on (``ssl``), as
    in Celery.
    """
    if not value:
        return {}
    scheme = _scheme(url)
    if scheme not in ("rediss", "sentinel", "redis+cluster"):
        raise ConfigurationError(
            f"{key} is set but the URL it applies to is {scheme}://, not TLS: use a "
            "rediss:// URL (Redis over TLS), or remove the setting")
    out: dict[str, Any] = {} if scheme == "rediss" else {"ssl": True}
    if value is True:
        return out
    assert isinstance(value, dict)
    unknown = sorted(set(value) - set(_TLS_KEYS))
    if unknown:
        raise ConfigurationError(f"{key}: unknown key(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(_TLS_KEYS)}")
    out.update({name: value[name] for name in _TLS_KEYS if value.get(name) is not None})
    if "ssl_cert_reqs" in out:
        out["ssl_cert_reqs"] = _cert_reqs(key, out["ssl_cert_reqs"])
    return out


def _cert_reqs(key: str, value: Any) -> str:
    """``ssl.CERT_REQUIRED`` (as Celery's docs write it) or a name, as a name."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return ssl.VerifyMode(value).name.lower().removeprefix("cert_")
        except ValueError:
            pass
    if isinstance(value, str):
        return value
    raise ConfigurationError(f"{key}: ssl_cert_reqs must be ssl.CERT_NONE, CERT_OPTIONAL or "
                             f"CERT_REQUIRED (or their names), got {value!r}")


# -- sources ---------------------------------------------------------------------
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
    """Read ``CONVEYOR_BROKER_URL`` and friends.

    The prefix is shared with variables that are not settings (``CONVEYOR_APP``),
    so an unknown name is an error only when it is a near miss of a setting
    (a typo such as ``CONVEYOR_WORKER_CONCURENCY``).
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, raw in env.items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix):].lower()
        if key in _FIELDS or key in NO_EFFECT:
            try:
                out[key] = _parse_env_value(key, raw)
            except ValueError as exc:
                problems.append(f"environment: {name}: {exc}")
        elif _close_to_a_setting(key):
            problems.append(unknown_key_message(key, f"environment ({name})"))
    if problems:
        raise ConfigurationError("; ".join(problems))
    return out


def _env_kind(key: str) -> str:
    if key not in _FIELDS:
        return NO_EFFECT[key].kind
    if key in _SECONDS:
        return "float"
    hint = _HINTS[key]
    # ``dict[str, Any]`` has __args__ too: only a union's arguments are alternatives.
    alternatives = (hint,) if getattr(hint, "__origin__", None) else getattr(
        hint, "__args__", (hint,))
    base = {getattr(a, "__origin__", a) for a in alternatives}
    for kind, typ in (("bool", bool), ("int", int), ("float", float), ("list", list),
                      ("dict", dict), ("str", str)):
        if typ in base:
            return kind
    return "str"


def _parse_env_value(key: str, raw: str) -> Any:
    """A string from the environment as the setting's type (checked again on update)."""
    kind, text = _env_kind(key), raw.strip()
    if kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    if kind in ("int", "float"):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    if kind == "list":
        return [item.strip() for item in raw.split(",") if item.strip()]
    if kind == "dict":
        try:
            value = json.loads(raw)
        except ValueError:
            raise ValueError(f"expected a JSON object, got {raw!r}") from None
        return value
    return raw


def field_default(name: str) -> Any:
    """A field's default value (for the generated docs)."""
    f = _FIELDS[name]
    if f.default is not MISSING:
        return f.default
    assert f.default_factory is not MISSING
    return f.default_factory()
