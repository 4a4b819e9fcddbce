"""RabbitMQ connection settings and the delay-ladder topology (no I/O here).

URL forms are Celery's (kombu's): ``amqp://user:password@host:port/vhost``;
an empty path or ``//`` is the ``/`` virtual host, ``%2F`` in the path is a
slash inside a vhost name.  ``pyamqp://`` is read as ``amqp://`` and
``amqps://`` turns TLS on (port 5671 by default).

Topology owned by :class:`conveyor.brokers.amqp.AMQPBroker`, per work queue
``Q`` (docs/decisions/0016-rabbitmq-broker.md):

* ``Q`` -- the work queue: durable, quorum by default (``queue_type``), or
  classic, with ``x-max-priority`` only when ``Q``'s own maximum
  (``queue_max_priority``: its ``max_priority`` in ``task_queues``) or
  ``max_priority`` (the app's ``task_queue_max_priority``) is set, as Celery
  declares it (ADR 0041); dead-letters into ``conveyor.dead``.
* ``conveyor.dead`` -- direct exchange; routing key ``Q`` reaches
  ``conveyor.dead.Q``, a durable classic queue of dead letters whose reason is
  the ``x-conveyor-reason`` header.
* ``conveyor.revocations`` -- a stream of revocations, each worker process's
  source for its own copy of the revoked ids (:mod:`conveyor._amqp_revocations`).
* ``conveyor.queues`` -- a classic queue holding one message per work queue
  created in the vhost (its name), so that ``queues()`` can list them.
* ``conveyor.delay.Q.<k>`` for k = LEVELS-1 .. 0 -- a topic exchange and a
  classic queue of the same name holding messages for ``2**k`` ticks
  (``x-message-ttl``) before dead-lettering them into level k-1's exchange.
  A delayed message's routing key spells its delay in binary, one word per
  level, most significant first; exchange k sends words whose k-th bit is 1
  into its queue and the rest on to exchange k-1.  Level 0 hands on to
  ``conveyor.delay.Q.due``, a fanout exchange bound to ``Q``.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor.exceptions import ConfigurationError

TICK = 0.01  # seconds per ladder tick: the delay precision
LEVELS = 28  # 2**28 ticks = 31 days; longer delays go round again
MAX_TICKS = 2**LEVELS - 1
QUEUE_TYPES = ("quorum", "classic")

# Transport options (broker_transport_options or the URL query) and their types.
_OPTIONS: dict[str, type] = {
    "heartbeat": int,
    "confirm_publish": bool,
    "queue_type": str,
    "state_url": str,
    "connect_timeout": float,
    "blocked_connection_timeout": float,
    "revocations_kept": float,
    "redelivery_wait": float,
    "max_priority": int,
    "queue_max_priority": dict,
    "ssl": dict,  # broker_use_ssl (tls_settings), as kombu's Connection(ssl=...)
}
MAX_PRIORITY_LIMIT = 255  # RabbitMQ's highest x-max-priority


@dataclass(frozen=True)
class AMQPOptions:
    """Everything needed to connect, parsed once from the URL and options."""

    host: str
    port: int
    vhost: str
    username: str
    password: str
    tls: bool
    heartbeat: int | None
    queue_type: str
    state_url: str
    connect_timeout: float
    blocked_connection_timeout: float
    revocations_kept: float = 7 * 86400.0  # the revocation stream's retention (seconds)
    # How long a copy RabbitMQ hands out again waits for a verdict before it runs
    # (seconds, at most a quarter of the lease): ADR 0031.
    redelivery_wait: float = 1.0
    # x-max-priority of classic work queues; None declares them without priorities
    # (ADR 0041: a priority queue costs RabbitMQ CPU on every message).
    max_priority: int | None = None
    # Queues with a maximum of their own (task_queues), which wins over max_priority.
    queue_max_priority: Mapping[str, int] = field(default_factory=dict)
    # broker_use_ssl's options for an amqps:// URL (checked by ``tls_settings``);
    # empty: the system's CA certificates and the URL's host name.
    tls_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def place(self) -> str:
        """Where the broker is, for error messages: never the password."""
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{self.vhost}"


def lease_heartbeat(lease: float) -> int:
    """The heartbeat timeout of a consuming connection when none was set: half
    the lease, in whole seconds (AMQP's unit), at least one.

    RabbitMQ gives up on a client that sent nothing for two to three heartbeat
    timeouts and hands its unacknowledged messages to other consumers; at half
    the lease that happens one to one and a half leases after a worker stopped
    (paused, frozen), as a lease runs out on the other brokers
    (docs/decisions/0034-rabbitmq-heartbeat-from-the-lease.md)."""
    return max(1, int(lease // 2))


def parse_amqp_url(url: str, options: dict[str, Any] | None = None,
                   need_state: bool = True) -> AMQPOptions:
    """Read a Celery-style AMQP URL and ``broker_transport_options``; the control
    channel, which keeps nothing, passes ``need_state=False``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("amqp", "amqps", "pyamqp"):
        raise ConfigurationError(f"broker_url: {scheme}:// is not an AMQP URL")
    settings: dict[str, Any] = dict(parse_qsl(parts.query))
    settings.update(options or {})
    settings = _checked(settings)
    if settings.get("confirm_publish") is False:
        raise ConfigurationError(
            "broker_transport_options['confirm_publish']=False is refused: every "
            "enqueue waits for RabbitMQ's publisher confirm so that nothing is lost")
    queue_type = str(settings.get("queue_type", "quorum"))
    if queue_type not in QUEUE_TYPES:
        raise ConfigurationError(f"broker_transport_options['queue_type']={queue_type!r}: "
                                 f"use one of {', '.join(QUEUE_TYPES)}")
    state_url = settings.get("state_url")
    if not state_url and need_state:
        raise ConfigurationError(
            "an amqp:// broker keeps idempotency keys, revocations and beat leases "
            "outside RabbitMQ: set result_backend to a redis:// or sqlite:// URL, or "
            "broker_transport_options['state_url'] to one")
    tls = scheme == "amqps"
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return AMQPOptions(
        host=parts.hostname or "localhost", port=parts.port or (5671 if tls else 5672),
        vhost=unquote(path) or "/", username=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"), tls=tls,
        heartbeat=settings.get("heartbeat"), queue_type=queue_type,
        state_url=str(state_url or ""),
        connect_timeout=float(settings.get("connect_timeout", 4.0)),
        blocked_connection_timeout=_positive(settings, "blocked_connection_timeout", 60.0),
        revocations_kept=_positive(settings, "revocations_kept", 7 * 86400.0),
        redelivery_wait=_positive(settings, "redelivery_wait", 1.0),
        max_priority=_max_priority(settings.get("max_priority"), queue_type),
        queue_max_priority=_queue_maxima(settings.get("queue_max_priority") or {}, queue_type),
        tls_options=tls_settings(url, settings["ssl"] or True) if "ssl" in settings else {})


_APP_WIDE = "task_queue_max_priority (broker_transport_options['max_priority'])"


def _max_priority(value: Any, queue_type: str) -> int | None:
    """The app-wide ``x-max-priority`` of classic queues (None: none)."""
    return None if value is None else _maximum(value, queue_type, _APP_WIDE)


def _queue_maxima(given: Mapping[str, Any], queue_type: str) -> dict[str, int]:
    """Each queue's own maximum, checked as the app-wide one is (the settings pass
    them only for classic queues: on quorum ones the startup warning names them)."""
    return {name: _maximum(value, queue_type, f"max_priority of queue {name!r} (task_queues)")
            for name, value in given.items() if value is not None}


def _maximum(value: Any, queue_type: str, what: str) -> int:
    """A classic queue's ``x-max-priority``; refused where it would be ignored."""
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= MAX_PRIORITY_LIMIT:
        raise ConfigurationError(
            f"{what}={value!r}: use 1..{MAX_PRIORITY_LIMIT}, RabbitMQ's range for x-max-priority")
    if queue_type != "classic":
        raise ConfigurationError(
            f"{what}={value!r} with queue_type={queue_type!r}: RabbitMQ 3.10's quorum "
            "queues have no priorities; use queue_type='classic'")
    return value


def max_priority_of(opts: AMQPOptions, queue: str) -> int | None:
    """``queue``'s ``x-max-priority``: its own, else the app's (Celery's
    ``Queues._set_max_priority`` fills in ``task_queue_max_priority`` only where a
    queue has none)."""
    return opts.queue_max_priority.get(queue, opts.max_priority)


def queue_type_of(url: str, options: dict[str, Any]) -> str:
    """The work queues' type that ``url`` and the transport options ask for."""
    query = dict(parse_qsl(urlsplit(url).query))
    return str(options.get("queue_type", query.get("queue_type", "quorum")))


def work_queue_arguments(opts: AMQPOptions, queue: str) -> dict[str, Any]:
    """The arguments a work queue is declared with: its type, its dead letters, and
    on a classic queue ``x-max-priority`` when one is configured (the queue's own
    in ``task_queues``, else Celery's ``task_queue_max_priority``): without it
    RabbitMQ serves first in, first out."""
    args: dict[str, Any] = {"x-queue-type": opts.queue_type,
                            "x-dead-letter-exchange": DEAD_EXCHANGE,
                            "x-dead-letter-routing-key": queue}
    if ordered(opts, queue):
        args["x-max-priority"] = max_priority_of(opts, queue)
    return args


def ordered(opts: AMQPOptions, queue: str) -> bool:
    """Whether ``queue``, as this process declares it, serves priorities."""
    return opts.queue_type == "classic" and max_priority_of(opts, queue) is not None


def unordered_reason(opts: AMQPOptions) -> str:
    """Why a priority sent to a queue is served first in, first out (the warning)."""
    if opts.queue_type == "quorum":
        return ("quorum queues have no priorities in RabbitMQ 3.10 (queue_type='classic' "
                "with task_queue_max_priority, or a Queue's max_priority, honours them)")
    return ("it was declared without x-max-priority: set task_queue_max_priority, or the "
            "queue's max_priority in task_queues (9 keeps Conveyor's ten levels), before "
            "the queue is created")


def amqp_options(url: str, opts: dict[str, Any], result_backend: str | None,
                 use_ssl: object) -> dict[str, Any]:
    """Broker options for RabbitMQ: the side store defaults to a redis or sqlite
    ``result_backend`` (docs/decisions/0016-rabbitmq-broker.md), unless the options
    or the URL's query (``?state_url=``) name one."""
    if use_ssl:  # checked once, with the rest, by parse_amqp_url (True: no options)
        opts["ssl"] = {} if use_ssl is True else use_ssl
    scheme = (result_backend or "").split("://", 1)[0].lower()
    side_stores = ("redis", "rediss", "unix", "sentinel", "redis+cluster", "sqlite")
    named = "state_url" in opts or "state_url" in dict(parse_qsl(urlsplit(url).query))
    if not named and scheme in side_stores:
        opts["state_url"] = result_backend
    return opts


# broker_use_ssl's keys for RabbitMQ: what Celery's docs show and py-amqp (kombu's
# client) passes to its TLS wrapper, less the server-side and deprecated ones.
TLS_KEYS = ("ca_certs", "certfile", "keyfile", "cert_reqs", "server_hostname", "ciphers")
_TLS_FILES = ("ca_certs", "certfile", "keyfile")


def tls_settings(url: str, value: object) -> dict[str, Any]:
    """``broker_use_ssl`` for an AMQP URL, checked: ``True`` or a dict of
    :data:`TLS_KEYS` (``cert_reqs`` as ``ssl.CERT_*``), with an ``amqps://`` URL.

    As with Redis (``rediss://``), the URL says whether TLS is on: with
    ``amqp://`` the setting is refused rather than switching TLS on behind the
    URL's back, on a port that then stays the plain one.  Files are checked
    here, so a wrong path is named at start-up, not as a failed connect."""
    if urlsplit(url).scheme.lower() != "amqps":
        raise ConfigurationError(
            "broker_use_ssl is set but the broker URL is amqp://, not TLS: use an amqps:// "
            "URL (port 5671 unless the URL names one), or remove the setting")
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"broker_use_ssl={value!r}: use True or a dict of "
                                 f"{', '.join(TLS_KEYS)}")
    unknown = sorted(set(value) - set(TLS_KEYS))
    if unknown:
        raise ConfigurationError(f"broker_use_ssl: unknown key(s) {', '.join(unknown)} for "
                                 f"RabbitMQ; known: {', '.join(TLS_KEYS)}")
    out = {key: value[key] for key in TLS_KEYS if value.get(key) is not None}
    for key in _TLS_FILES:
        if key in out and not os.path.isfile(out[key]):
            raise ConfigurationError(f"broker_use_ssl[{key!r}]: no file at {out[key]!r}")
    if "keyfile" in out and "certfile" not in out:
        raise ConfigurationError("broker_use_ssl: keyfile without certfile (the client "
                                 "certificate it belongs to)")
    if "cert_reqs" in out:
        out["cert_reqs"] = _verify_mode(out["cert_reqs"])
    return out


def _verify_mode(value: Any) -> ssl.VerifyMode:
    """``ssl.CERT_REQUIRED`` (as Celery's docs write it) or its name."""
    try:
        if isinstance(value, str):
            return ssl.VerifyMode[value.upper() if value.upper().startswith("CERT_")
                                  else f"CERT_{value.upper()}"]
        if isinstance(value, int) and not isinstance(value, bool):
            return ssl.VerifyMode(value)
    except (KeyError, ValueError):
        pass
    raise ConfigurationError(f"broker_use_ssl['cert_reqs']={value!r}: use ssl.CERT_NONE, "
                             "CERT_OPTIONAL or CERT_REQUIRED (or their names)")


def ssl_context(o: AMQPOptions) -> ssl.SSLContext:
    """The TLS context of every connection to ``o``'s broker: the system's CA
    certificates unless ``ca_certs`` names others, a client certificate when
    ``certfile`` is given, and the server's certificate checked against its host
    name unless ``cert_reqs`` is ``CERT_NONE`` (which trusts any server)."""
    t = o.tls_options
    context = ssl.create_default_context(cafile=t.get("ca_certs"))
    if "certfile" in t:
        context.load_cert_chain(t["certfile"], t.get("keyfile"))
    if "ciphers" in t:
        context.set_ciphers(t["ciphers"])
    mode = t.get("cert_reqs", ssl.CERT_REQUIRED)
    if mode is not ssl.CERT_REQUIRED:
        context.check_hostname = False
        context.verify_mode = mode
    return context


def tls_server_name(o: AMQPOptions) -> str:
    """The name the server's certificate is checked against (and sent for SNI)."""
    return str(o.tls_options.get("server_hostname") or o.host)


def _positive(settings: dict[str, Any], key: str, default: float) -> float:
    value = float(settings.get(key, default))
    if not value > 0:
        raise ConfigurationError(f"broker_transport_options[{key!r}]={value!r}: use a number "
                                 "of seconds above 0")
    return value


def _checked(settings: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        kind = _OPTIONS.get(key)
        if kind is None:
            raise ConfigurationError(
                f"broker option {key!r} does not apply to RabbitMQ; known: {', '.join(_OPTIONS)}")
        out[key] = _coerce(key, kind, value)
    return out


def _coerce(key: str, kind: type, value: Any) -> Any:
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigurationError(f"broker option {key}={value!r}: expected true or false")
        return value.lower() in ("1", "true", "yes")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"broker option {key}={value!r}: expected {kind.__name__}") from None


# -- the delay ladder ---------------------------------------------------------------
def delay_ticks(seconds: float) -> int:
    """Ticks to wait, rounded up (never early), capped at the ladder's top."""
    return min(MAX_TICKS, max(1, math.ceil(seconds / TICK - 1e-9)))


def delay_routing_key(ticks: int) -> str:
    """The binary spelling of ``ticks``: one word per level, level LEVELS-1 first."""
    return ".".join("1" if ticks >> level & 1 else "0" for level in range(LEVELS - 1, -1, -1))


def level_pattern(level: int, bit: str) -> str:
    """Topic binding that matches keys whose ``level`` word is ``bit``."""
    before = LEVELS - 1 - level
    return ".".join(["*"] * before + [bit, "#"])


def delay_name(queue: str, level: int) -> str:
    return f"conveyor.delay.{queue}.{level}"


def due_name(queue: str) -> str:
    return f"conveyor.delay.{queue}.due"


DEAD_QUEUE_PREFIX = "conveyor.dead."
REGISTRY = "conveyor.queues"  # one message per work queue ever declared: its name


def dead_name(queue: str) -> str:
    return f"{DEAD_QUEUE_PREFIX}{queue}"


DEAD_EXCHANGE = "conveyor.dead"


def not_in_rabbitmq(what: str) -> ConfigurationError:
    """The error for a store that other brokers keep beside themselves."""
    return ConfigurationError(
        f"{what} cannot be kept in RabbitMQ (an amqp:// broker_url): set result_backend "
        "to redis://host:port/db or sqlite:///path.db")
