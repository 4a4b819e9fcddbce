"""What the Redis broker and the Redis result store share.

* :func:`parse_redis_url` turns ``redis://[user:password@]host[:port][/db]``,
  ``rediss://…`` (TLS) or ``unix:///path/redis.sock?db=N`` plus options into
  :class:`RedisOptions`.  ``?prefix=`` (or the ``prefix`` option) sets the key
  prefix, ``conveyor`` by default, so two apps can share one database.
* :class:`ClientHolder` builds the ``redis.Redis`` client lazily and again in a
  forked child: a socket inherited across ``fork()`` must never be used by two
  processes.
* Clients are built with redis-py's own retries switched **off**.  redis-py
  would otherwise resend any command after a connection error, including an
  enqueue or a reserve whose first attempt may already have run.  Reads that
  are safe to repeat go through :func:`retry_read` (capped, jittered backoff);
  writes fail once, with a clear error, and the caller decides.
* :func:`translate_errors` maps redis-py's connection errors onto Conveyor's
  exceptions with a message naming the server and whether the operation ran.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from conveyor.exceptions import ConfigurationError

log = logging.getLogger("conveyor.redis")

T = TypeVar("T")

DEFAULT_PREFIX = "conveyor"
DEFAULT_PORT = 6379

# Errors that mean "the server could not be reached or stopped answering".
# BusyLoadingError (a restarted server still reading its dump) is a subclass of
# ConnectionError, so it is covered and retried like any other outage.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
)

# Options a URL query or ``broker_transport_options`` may set, with their types.
_OPTION_TYPES: dict[str, Callable[[Any], Any]] = {
    "prefix": str,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "health_check_interval": int,
    "max_connections": int,
    "db": int,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
}

# Celery's Redis transport options that have no meaning here: said once, then ignored.
_CELERY_ONLY = {
    "visibility_timeout": "leases replace it (broker_lease_timeout, renewed while a task runs)",
    "fanout_prefix": "Conveyor has no fanout exchanges",
    "fanout_patterns": "Conveyor has no fanout exchanges",
    "sep": "priority queues are separate keys, not name suffixes",
    "queue_order_strategy": "queues are always read in the order the worker lists them",
    "max_retries": "connection retries are the worker's job",
    "interval_start": "connection retries are the worker's job",
    "interval_step": "connection retries are the worker's job",
    "interval_max": "connection retries are the worker's job",
}

_RENAMED = {"global_keyprefix": "prefix"}

_CERT_REQS = {"none": "none", "cert_none": "none", "optional": "optional",
              "cert_optional": "optional", "required": "required", "cert_required": "required"}


@dataclass(frozen=True)
class RedisOptions:
    """Where a Redis server is and how to talk to it."""

    url: str
    prefix: str
    address: str  # "host:port" or the socket path, for error messages
    client_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def socket_timeout(self) -> float:
        return float(self.client_kwargs["socket_timeout"])


def parse_redis_url(url: str, options: Mapping[str, Any] | None = None) -> RedisOptions:
    """Read a ``redis://``, ``rediss://`` or ``unix://`` URL; ``options`` override its query."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(f"{url!r}: expected redis://, rediss:// or unix://")
    settings: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        settings[key] = value
    settings.update(options or {})
    settings = _checked(url, settings)
    password = settings.pop("password", None)
    kwargs: dict[str, Any] = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else password,
        "socket_timeout": settings.pop("socket_timeout", 5.0),
        "socket_connect_timeout": settings.pop("socket_connect_timeout", 4.0),
        "health_check_interval": settings.pop("health_check_interval", 30),
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        # RESP2: under RESP3 redis-py 8 turns on "maintenance notifications",
        # which skips its check for dead pooled connections; after a server
        # restart every pooled connection would then fail once more.
        "protocol": 2,
    }
    if "max_connections" in settings:
        kwargs["max_connections"] = settings.pop("max_connections")
    prefix = settings.pop("prefix", DEFAULT_PREFIX)
    if not prefix:
        raise ConfigurationError(f"{url!r}: the key prefix must not be empty")
    if scheme == "unix":
        kwargs["unix_socket_path"] = unquote(parts.path)
        kwargs["db"] = settings.pop("db", 0)
        address = kwargs["unix_socket_path"]
    else:
        host, port = parts.hostname or "localhost", parts.port or DEFAULT_PORT
        kwargs.update(host=host, port=port, db=_db_from_path(url, parts.path, settings))
        address = f"{host}:{port}"
    if scheme == "rediss":
        kwargs.update(_ssl_kwargs(settings))
    leftover = sorted(k for k in settings if k.startswith("ssl_"))
    if leftover:
        raise ConfigurationError(f"{url!r}: {', '.join(leftover)} only apply to rediss:// URLs")
    return RedisOptions(url=url, prefix=prefix, address=address, client_kwargs=kwargs)


def _checked(url: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Typed copies of known options; unknown ones are an error, Celery-only ones a warning."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _RENAMED:
            raise ConfigurationError(f"{url!r}: option {key!r} is called {_RENAMED[key]!r} here")
        if key in _CELERY_ONLY:
            log.warning("Redis option %r is ignored: %s", key, _CELERY_ONLY[key])
            continue
        if key == "password":
            out[key] = str(value)
            continue
        convert = _OPTION_TYPES.get(key)
        if convert is None:
            known = ", ".join(sorted([*_OPTION_TYPES, "password"]))
            raise ConfigurationError(f"{url!r}: unknown Redis option {key!r}; known: {known}")
        try:
            out[key] = convert(value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{url!r}: option {key}={value!r}: {exc}") from None
    return out


def _db_from_path(url: str, path: str, settings: dict[str, Any]) -> int:
    db = settings.pop("db", 0)
    text = path.strip("/")
    if not text:
        return int(db)
    if not text.isdigit():
        raise ConfigurationError(f"{url!r}: the path must be a database number, got {text!r}")
    return int(text)


def _ssl_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ssl": True}
    reqs = settings.pop("ssl_cert_reqs", "required")
    if reqs.lower() not in _CERT_REQS:
        raise ConfigurationError(f"ssl_cert_reqs={reqs!r}: use none, optional or required")
    kwargs["ssl_cert_reqs"] = _CERT_REQS[reqs.lower()]
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in settings:
            kwargs[name] = settings.pop(name)
    return kwargs


def as_text(value: bytes | str) -> str:
    """A reply as text (clients here return bytes; the typing admits str too)."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str | None) -> bytes | None:
    """A reply as bytes, None kept."""
    return value.encode() if isinstance(value, str) else value


class ClientHolder:
    """One ``redis.Redis`` (and its pool) per process.

    redis-py's pool already drops inherited connections after a fork; holding
    the client here as well lets the broker and the store rebuild their own
    per-process state (scripts) at the same moment.
    """

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self._client: redis.Redis | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        pid = os.getpid()
        if pid != self._pid:
            # A lock held by some parent thread at fork time would stay held
            # forever here, so the child starts from fresh state; the parent's
            # sockets are left alone (closing them would cut the parent off).
            self._lock = threading.Lock()
            self._client = None
            self._pid = pid
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = redis.Redis(**self.options.client_kwargs)
                client = self._client
        return client

    @property
    def forked(self) -> bool:
        """True in a child process until :attr:`client` is next used."""
        return os.getpid() != self._pid

    def close(self) -> None:
        if self._client is not None and os.getpid() == self._pid:
            self._client.close()
        self._client = None


def retry_read(
    read: Callable[[], T], attempts: int = 3, base: float = 0.05, cap: float = 0.5
) -> T:
    """Run an idempotent read, retrying connection errors with capped, jittered backoff.

    Full jitter (a uniform sleep up to the capped exponential step) keeps many
    clients that lost the same server from reconnecting in lock step.
    """
    for attempt in range(attempts):
        try:
            return read()
        except CONNECTION_ERRORS:
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.0, min(cap, base * 2**attempt)))
    raise AssertionError("unreachable")  # pragma: no cover


def failed_before_sending(error: BaseException) -> bool:
    """True when redis-py could not even connect, so no command reached the server.

    A refused or timed-out connect and a server still loading its data set
    both fail before anything runs; a connection that breaks after the
    command was written leaves the outcome unknown.
    """
    if isinstance(error, redis.BusyLoadingError):
        return True
    text = str(error).lower()
    return isinstance(error, redis.ConnectionError) and (
        "connecting to" in text or "connection refused" in text
    )


@contextmanager
def translate_errors(
    address: str,
    action: str,
    error_cls: type[Exception],
    retry_hint: str = "",
    changes_nothing: bool = False,
) -> Iterator[None]:
    """Raise ``error_cls`` with a readable message when Redis cannot be reached.

    ``action`` names the operation ("enqueue", "reserve", …); ``retry_hint``
    tells the caller what repeating it does.  ``changes_nothing`` marks reads
    (and waits) whose interruption leaves nothing half done.
    """
    try:
        yield
    except CONNECTION_ERRORS as exc:
        if changes_nothing or failed_before_sending(exc):
            outcome = f"{action} did not happen"
        else:
            outcome = f"{action} may or may not have taken effect (the connection broke mid-call)"
        hint = f"; {retry_hint}" if retry_hint else ""
        raise error_cls(f"Redis at {address} is unavailable: {outcome} ({exc}){hint}") from exc


class Backoff:
    """Capped, jittered exponential delays for a loop that reconnects on its own."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        step = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        return random.uniform(step / 2, step)

    def reset(self) -> None:
        self.failures = 0


def call(client: redis.Redis, *args: Any) -> Any:
    """Send one command on a pooled connection and return its raw reply.

    ``client.execute_command`` wraps every command in redis-py's retry,
    observability and reply-callback layers: ~15 µs of CPU per command on the
    benchmark VM (a quarter of a small command's client cost).  Conveyor
    turns retries off and reads raw replies anyway, so hot paths (one or more
    commands per task) call this instead.  An error reply is raised and the
    connection stays usable; any other failure while sending or reading (a
    broken socket, a timeout, an interrupt) makes redis-py's connection
    disconnect itself before it goes back to the pool, so no later caller
    reads this command's reply (``tests/integration/test_redis_call.py``).
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        pool.release(conn)


def run_script(client: redis.Redis, script: Script, keys: list[Any], args: list[Any]) -> Any:
    """``EVALSHA`` of a registered script through :func:`call`, loading it once
    if the server does not have it (a restart or ``SCRIPT FLUSH``)."""
    try:
        return call(client, "EVALSHA", script.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        client.script_load(script.script)
        return call(client, "EVALSHA", script.sha, len(keys), *keys, *args)
