"""What the Redis broker and the Redis result store share.

* :func:`parse_redis_url` turns ``redis://[user:password@]host[:port][/db]``,
  ``rediss://…`` (TLS) or ``unix:///path/redis.sock?db=N`` plus options into
  :class:`RedisOptions`.  Celery's Sentinel form,
  ``sentinel://[:password@]host:26379[/db];sentinel://host2:26379`` with the
  ``master_name`` option (``sentinel_kwargs`` for the sentinels' own
  connections, ``min_other_sentinels``), reaches the master those sentinels
  name, and the next one after a failover; as in Celery, the database and
  password come from the first address and apply to the master (a later
  address that names another database, password or any option is refused).
  ``redis+cluster://host:port,host2:port2`` reaches the Redis Cluster master
  that owns the app's hash slot; the prefix becomes a hash tag
  (:mod:`conveyor._redis_cluster`).
* TLS: ``rediss://`` for one server; ``ssl=true`` (set by Celery's
  ``broker_use_ssl``) for the master a ``sentinel://`` URL reaches and for
  every node of a ``redis+cluster://`` one.  The sentinels' own connections
  take theirs from ``sentinel_kwargs`` (``ssl``, ``ssl_ca_certs``, …), as in
  Celery: a sentinel is another server, often with another certificate.
  ``?prefix=`` (or the ``prefix`` option) sets the key prefix, ``conveyor``
  by default, so two apps can share one database.
* :class:`ClientHolder` builds the ``redis.Redis`` client lazily and again in a
  forked child: a socket inherited across ``fork()`` must never be used by two
  processes.
* Clients are built with redis-py's own retries switched **off**.  redis-py
  would otherwise resend any command after a connection error, including an
  enqueue or a reserve whose first attempt may already have run.  Reads that
  are safe to repeat go through :func:`retry_read` (capped, jittered backoff);
  writes fail once, with a clear error, and the caller decides.
* Pooled connections that died are dropped, not reused: when a command on one
  connection fails (a timeout, a reset), every idle connection of the same
  pool is closed too (:class:`DroppingPool`).  They share the path that just
  failed; after a half-open outage (a NAT or firewall that dropped its state)
  each would otherwise cost a full ``socket_timeout`` on its next use, long
  enough for the leases it was meant to renew to lapse.
* Every blocking call is bounded: ``socket_timeout`` (default 5 s) caps each
  read and write, ``socket_connect_timeout`` (4 s) each connect, and the idle
  ``BLPOP`` blocks at most half the socket timeout, so it never looks like a
  dead connection.  A connection idle for ``health_check_interval`` (30 s) is
  pinged before use; TCP keepalive is on.  See docs/operations.md, "Redis in
  production", for what each bounds.
* :func:`translate_errors` maps redis-py's connection errors onto Conveyor's
  exceptions with a message naming the server and whether the operation ran.
"""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from conveyor._pid import current as current_pid
from conveyor._redact import url as redact_url
from conveyor._redis_options import _CELERY_ONLY, CLUSTER_SCHEME, SHARD_OPTIONS
from conveyor.exceptions import ConfigurationError

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
_HiredisParser: Any
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # the redis extra installs hiredis; a bare redis-py still works
    _hiredis_pack = None
_NOT_ENOUGH_DATA: Any
try:
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _HiredisParser
except ImportError:  # another redis-py layout: exchange() takes redis-py's path
    _HiredisParser = _NOT_ENOUGH_DATA = None

if TYPE_CHECKING:
    # Loaded only for a redis+cluster:// URL: every worker process would hold it.
    from conveyor._redis_cluster import ClusterOptions

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

def _flag(value: Any) -> bool:
    """A yes/no option from a URL query (text) or from settings (a bool)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


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
    "master_name": str,
    "wait_replicas": int,
    "wait_timeout": float,
    "min_other_sentinels": int,
    "sentinel_kwargs": dict,
    "ssl": _flag,
}

# Only meaningful with a sentinel:// URL.
_SENTINEL_ONLY = ("master_name", "min_other_sentinels", "sentinel_kwargs")
DEFAULT_SENTINEL_PORT = 26379
# Schemes whose servers speak TLS when ``ssl`` is set (rediss:// always does).
_TLS_BY_OPTION = ("sentinel", CLUSTER_SCHEME)

# What ``sentinel_kwargs`` may set for the connections to the sentinels.  redis-py
# would take more, and silently ignore the ssl_* ones without ``ssl``: both refused.
_SENTINEL_KWARG_TYPES: dict[str, Callable[[Any], Any]] = {
    "username": str,
    "password": str,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "ssl": _flag,
    "ssl_cert_reqs": lambda value: value,  # a name or ssl.CERT_*; checked by _ssl_kwargs
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
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
    sentinel: SentinelOptions | None = None
    cluster: ClusterOptions | None = None
    # Enqueues return only once this many replicas confirmed them (``WAIT``).
    wait_replicas: int = 0
    wait_timeout: float = 1.0

    @property
    def socket_timeout(self) -> float:
        return float(self.client_kwargs["socket_timeout"])


@dataclass(frozen=True)
class SentinelOptions:
    """The sentinels to ask, and for which master."""

    hosts: tuple[tuple[str, int], ...]
    master_name: str
    min_other_sentinels: int = 0
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)


def parse_redis_url(url: str, options: Mapping[str, Any] | None = None) -> RedisOptions:
    """Read a ``redis://``, ``rediss://``, ``unix://``, ``sentinel://`` or
    ``redis+cluster://`` URL; ``options`` override its query."""
    parts = urlsplit(url.split(";", 1)[0])
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix", "sentinel", CLUSTER_SCHEME):
        raise ConfigurationError(
            f"{url!r}: expected redis://, rediss://, unix://, sentinel:// or redis+cluster://")
    settings: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        settings[key] = value
    _check_sharding(url, scheme, settings, options or {})
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
    # No cap unless asked: redis-py 8 caps a pool at 100 connections, fewer than
    # a worker with -c 200 (threads or greenlets, each blocked in reserve) uses.
    # A pool opens only as many as are in use at once.
    kwargs["max_connections"] = settings.pop("max_connections", None) or 2**31
    waits = {"wait_replicas": settings.pop("wait_replicas", 0),
             "wait_timeout": settings.pop("wait_timeout", 1.0)}
    if waits["wait_replicas"] < 0 or not waits["wait_timeout"] > 0:
        raise ConfigurationError(f"{url!r}: wait_replicas must be >= 0 and wait_timeout > 0")
    prefix = settings.pop("prefix", DEFAULT_PREFIX)
    if not prefix:
        raise ConfigurationError(f"{url!r}: the key prefix must not be empty")
    sentinel = cluster = None
    if scheme == CLUSTER_SCHEME:
        from conveyor._redis_cluster import cluster_options, hash_tagged

        prefix = hash_tagged(prefix)
        cluster = cluster_options(url, parts.netloc, prefix)
        if _db_from_path(url, parts.path, settings) != 0:
            raise ConfigurationError(f"{url!r}: Redis Cluster has only database 0")
        address = f"the master of slot {cluster.slot} in the Redis Cluster of " + ",".join(
            f"{host}:{port}" for host, port in cluster.nodes)
    elif scheme == "sentinel":
        kwargs["db"] = _db_from_path(url, parts.path, settings)
        sentinel = _sentinel_options(url, settings, kwargs["db"])
        address = f"master {sentinel.master_name!r} of sentinels " + ",".join(
            f"{host}:{port}" for host, port in sentinel.hosts)
    elif scheme == "unix":
        kwargs["unix_socket_path"] = unquote(parts.path)
        kwargs["db"] = settings.pop("db", 0)
        address = kwargs["unix_socket_path"]
    else:
        host, port = parts.hostname or "localhost", parts.port or DEFAULT_PORT
        kwargs.update(host=host, port=port, db=_db_from_path(url, parts.path, settings))
        address = f"{host}:{port}"
    if _wants_tls(url, scheme, settings):
        kwargs.update(_ssl_kwargs(settings))
    leftover = sorted(k for k in settings if k.startswith("ssl_"))
    if leftover:
        raise ConfigurationError(
            f"{url!r}: {', '.join(leftover)} only apply with TLS: a rediss:// URL, or "
            "ssl=true (Celery: broker_use_ssl) with a sentinel:// or redis+cluster:// URL")
    leftover = sorted(k for k in settings if k in _SENTINEL_ONLY)
    if leftover:
        raise ConfigurationError(f"{url!r}: {', '.join(leftover)} only apply to sentinel:// URLs")
    return RedisOptions(url=url, prefix=prefix, address=address, client_kwargs=kwargs,
                        sentinel=sentinel, cluster=cluster, **waits)


def _check_sharding(url: str, scheme: str, query: dict[str, Any],
                    options: Mapping[str, Any]) -> None:
    """``queue_shards`` belongs to the broker of a cluster URL (conveyor._redis_shards).

    In the URL's query it is read by the broker and left alone here: every
    other store at that URL keeps its keys on the home slot.  In a store's own
    options it would change nothing, so it is refused there.
    """
    query.pop("queue_shards", None)
    given = [name for name in SHARD_OPTIONS if name in options]
    if scheme != CLUSTER_SCHEME and (given or "queue_shards" in _query_keys(url)):
        raise ConfigurationError(
            f"{redact_url(url)}: queue_shards spreads queues over the masters of a Redis "
            "Cluster; it needs a redis+cluster:// URL")
    if given:
        raise ConfigurationError(
            f"{', '.join(given)} only apply to the broker (broker_transport_options): results, "
            "events, beat state and remote control stay on the app's home slot")


def _query_keys(url: str) -> list[str]:
    return [key for key, _ in parse_qsl(urlsplit(url.split(";", 1)[0]).query)]


def _wants_tls(url: str, scheme: str, settings: dict[str, Any]) -> bool:
    """Whether the data servers speak TLS: always for rediss://, when ``ssl`` is set
    for a Sentinel master or a cluster's nodes; ``ssl`` anywhere else is refused."""
    asked = settings.pop("ssl", None)
    if scheme == "rediss":
        if asked is False:
            raise ConfigurationError(f"{url!r}: ssl=false contradicts rediss://")
        return True
    if asked and scheme not in _TLS_BY_OPTION:
        raise ConfigurationError(
            f"{url!r}: ssl applies to sentinel:// and redis+cluster:// URLs; "
            "for one server use a rediss:// URL")
    return bool(asked)


def _sentinel_options(url: str, settings: dict[str, Any], db: int) -> SentinelOptions:
    """The sentinels of a ``sentinel://a;sentinel://b`` URL and the Sentinel options."""
    hosts: list[tuple[str, int]] = []
    parts = [urlsplit(chunk.strip()) for chunk in url.split(";")]
    for part in parts:
        if part.scheme.lower() != "sentinel" or not part.hostname:
            raise ConfigurationError(
                f"{url!r}: every address must be sentinel://host:port, separated by ';'")
        if part is not parts[0] and _differs_from_first(part, parts[0], db):
            raise ConfigurationError(
                f"{url!r}: the database, password and options of a sentinel:// URL go on "
                f"its first address (as in Celery); {part.hostname}:{part.port} names others")
        hosts.append((part.hostname, part.port or DEFAULT_SENTINEL_PORT))
    master_name = settings.pop("master_name", None)
    if not master_name:
        raise ConfigurationError(
            f"{url!r}: a sentinel:// URL needs the master_name option "
            "(broker_transport_options or result_backend_transport_options)")
    sentinel_kwargs = _sentinel_kwargs(url, settings.pop("sentinel_kwargs", {}))
    return SentinelOptions(tuple(hosts), master_name,
                           settings.pop("min_other_sentinels", 0), sentinel_kwargs)


def _differs_from_first(part: SplitResult, first: SplitResult, db: int) -> bool:
    """A later sentinel address with a query, or a database or credentials of its
    own: Celery reads those from the first address only, so they would be ignored."""
    credentials = (part.username, part.password)
    return bool(part.query) or part.path.strip("/") not in ("", str(db)) or credentials not in (
        (None, None), (first.username, first.password))


def _sentinel_kwargs(url: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``sentinel_kwargs`` checked and typed: how to reach the sentinels themselves
    (1 s timeouts unless set; TLS only with ``ssl``)."""
    unknown = sorted(set(given) - set(_SENTINEL_KWARG_TYPES))
    if unknown:
        raise ConfigurationError(
            f"{url!r}: unknown sentinel_kwargs key(s) {', '.join(unknown)}; "
            f"known: {', '.join(_SENTINEL_KWARG_TYPES)}")
    out: dict[str, Any] = {}
    for key, value in given.items():
        try:
            out[key] = _SENTINEL_KWARG_TYPES[key](value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{url!r}: sentinel_kwargs[{key!r}]: {exc}") from None
    if out.pop("ssl", False):
        out.update(_ssl_kwargs(out))
    leftover = sorted(k for k in out if k.startswith("ssl_") and "ssl" not in out)
    if leftover:
        raise ConfigurationError(
            f"{url!r}: sentinel_kwargs {', '.join(leftover)} need ssl=True there too")
    return {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **out}


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
    """redis-py's TLS arguments, popped from ``settings``; certificates are checked
    unless ``ssl_cert_reqs`` says otherwise (a name, or Celery's ``ssl.CERT_*``)."""
    kwargs: dict[str, Any] = {"ssl": True}
    reqs = settings.pop("ssl_cert_reqs", "required")
    if isinstance(reqs, int) and not isinstance(reqs, bool) and reqs in set(ssl.VerifyMode):
        reqs = ssl.VerifyMode(reqs).name
    if str(reqs).lower() not in _CERT_REQS:
        raise ConfigurationError(f"ssl_cert_reqs={reqs!r}: use none, optional or required")
    kwargs["ssl_cert_reqs"] = _CERT_REQS[str(reqs).lower()]
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


class _DropsIdleOnFailure:
    """A connection pool that closes its idle connections when one breaks in use.

    redis-py disconnects a connection whose command failed (timeout, reset,
    protocol error) before it comes back, so a connection released without a
    socket broke in use.  Its idle siblings most likely went the same way;
    closing them makes the next caller connect afresh (bounded by
    ``socket_connect_timeout``) instead of waiting ``socket_timeout`` on a
    dead socket.  A healthy server costs only the reconnects.

    :meth:`lend` and :meth:`give_back` are the hot commands' way in and out
    (:func:`call`, :func:`call_many`, scripts): redis-py's ``get_connection``
    and ``release`` record metrics, dispatch an event, build a ``poll``
    object and take the pool's lock twice per command, ~7 µs of CPU here
    against ~1.3 µs for these (``docs/performance.md``, round two, second
    pass).  They keep what matters of those: fork safety (another process
    id sends the call through redis-py's own path, which resets the pool),
    the lock around the pool's lists (threads, and greenlets under gevent,
    which patches the lock), the check that an idle connection the server
    closed, or that holds unread bytes, is reconnected before use, and the
    rule above: anything but a clean, connected return goes back through
    :meth:`release`, so a connection that failed is never lent again.
    Skipped: redis-py's connection-count metrics (off unless an application
    turns on redis-py's observability) and its re-authentication event (for
    streaming credential providers, which Conveyor's URLs cannot configure).
    """

    def release(self, connection: Any) -> None:
        broke = not connection.is_connected
        super().release(connection)  # type: ignore[misc]
        if broke:
            self.disconnect(inuse_connections=False)  # type: ignore[attr-defined]

    def lend(self) -> Any:
        """An idle connection, checked and connected; a new one through redis-py."""
        pool: Any = self
        if pool.pid != os.getpid() or _POLL is None:
            return pool.get_connection()  # after a fork: redis-py resets the pool
        with pool._lock:
            idle = pool._available_connections
            connection = idle.pop() if idle else None
            if connection is not None:
                pool._in_use_connections.add(connection)
        if connection is None:
            return pool.get_connection()  # makes one (within max_connections)
        try:
            if connection._sock is None:  # dropped while idle (see release)
                connection.connect()
            elif _unclean(connection):
                connection.disconnect()
                connection.connect()
        except BaseException:
            pool.release(connection)
            raise
        return connection

    def give_back(self, connection: Any) -> None:
        """Return a lent connection; one that failed goes through :meth:`release`.

        No process id check of its own: :meth:`lend` made one, and a fork
        between the two leaves this call in the parent (the child has only
        the forking thread).  A greenlet carried into a child by gevent's
        fork hands back a connection :meth:`owns_connection` refuses once the
        child's pool was reset, or into a pool the child's next :meth:`lend`
        resets.
        """
        pool: Any = self
        if (connection._sock is None or not pool.owns_connection(connection)
                or _must_reconnect(connection)):
            pool.release(connection)
            return
        with pool._lock:
            try:
                pool._in_use_connections.remove(connection)
            except KeyError:  # not ours any more (the pool was reset)
                return
            pool._available_connections.append(connection)


# select.poll, as redis-py's own check uses it (gevent patches it cooperatively);
# None where it does not exist (Windows), and lending takes redis-py's path.
_POLL: Any = getattr(select, "poll", None)


def _unclean(connection: Any) -> bool:
    """Does an idle connection hold unread bytes or an end of file (server closed it)?

    One ``poll(0)`` on a poll object kept with the connection while its socket
    lives; bytes a TLS socket already decrypted count too.  redis-py asks its
    parser instead, building a poll object each time.
    """
    sock = connection._sock
    kept = connection.__dict__.get("_conveyor_poll")
    if kept is None or kept[0] is not sock:
        poller = _POLL()
        poller.register(sock, select.POLLIN)
        kept = connection._conveyor_poll = (sock, poller, getattr(sock, "pending", None))
    if kept[2] is not None and kept[2]():
        return True
    return bool(kept[1].poll(0))


def _must_reconnect(connection: Any) -> bool:
    """redis-py 8's flag for a connection its maintenance notifications moved."""
    flag = getattr(connection, "should_reconnect", None)
    return bool(flag is not None and flag())


def lend(pool: Any) -> Any:
    """A connection from ``pool``: :meth:`_DropsIdleOnFailure.lend`, or redis-py's path."""
    if isinstance(pool, _DropsIdleOnFailure):
        return pool.lend()
    return pool.get_connection()


def give_back(pool: Any, connection: Any) -> None:
    """Return what :func:`lend` gave."""
    if isinstance(pool, _DropsIdleOnFailure):
        pool.give_back(connection)
    else:
        pool.release(connection)


class DroppingPool(_DropsIdleOnFailure, redis.ConnectionPool):
    """A pool to one server that drops idle connections when one breaks."""


class DroppingSentinelPool(_DropsIdleOnFailure, SentinelConnectionPool):
    """A pool to the master sentinels name, dropping idle connections when one breaks.

    Connections ask the sentinels for the master's address whenever they
    connect, so after a failover the first failure sends every next call to
    the new master instead of to the old one's dead sockets.
    """


class _Sentinels(Sentinel):
    """redis-py's Sentinel, whose "no master found" says what each sentinel answered.

    redis-py's own message lists every sentinel client's full ``repr`` (some
    3 KB for three sentinels) and the error's class only, so a refused
    connection and a failed certificate check read alike.
    """

    def discover_master(self, service_name: str) -> tuple[str, int]:
        failures: list[str] = []
        for index, sentinel in enumerate(self.sentinels):
            where = _sentinel_address(sentinel)
            try:
                masters = sentinel.sentinel_masters()
            except CONNECTION_ERRORS as exc:
                failures.append(f"{where}: {exc}")
                continue
            state = _master_state(masters, service_name)
            if state and self.check_master_state(state, service_name):
                # The sentinel that knew goes first next time, as in redis-py.
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                return state["ip"], state["port"]
            failures.append(f"{where}: no master {service_name!r} that is up")
        raise MasterNotFoundError(
            f"no sentinel named a master for {service_name!r} ({'; '.join(failures)})")


def _master_state(masters: Any, service_name: str) -> dict[str, Any] | None:
    """The state ``SENTINEL MASTERS`` gives for ``service_name``: redis-py parses
    the reply into a dict keyed by name (RESP2) or, as typed since 8.2, a list."""
    if isinstance(masters, dict):
        found: dict[str, Any] | None = masters.get(service_name)
        return found
    return next((m for m in masters if m.get("name") == service_name), None)


def _sentinel_address(sentinel: redis.Redis) -> str:
    kwargs = sentinel.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def _sentinel_client(kwargs: Mapping[str, Any], sentinel: SentinelOptions) -> redis.Redis:
    # One attempt per sentinel: redis-py's default retries (three, backing off
    # from 1 s) would make each unreachable sentinel cost four timeouts.
    ask = {**sentinel.sentinel_kwargs, "retry": Retry(NoBackoff(), 0)}
    manager = _Sentinels(list(sentinel.hosts), min_other_sentinels=sentinel.min_other_sentinels,
                         sentinel_kwargs=ask, **kwargs)
    return manager.master_for(sentinel.master_name, connection_pool_class=DroppingSentinelPool)


def new_client(kwargs: Mapping[str, Any], sentinel: SentinelOptions | None = None,
               cluster: ClusterOptions | None = None) -> redis.Redis:
    """A ``redis.Redis`` for ``kwargs`` whose pool is a :class:`DroppingPool`.

    redis-py maps client options onto connection arguments (TCP, TLS, unix
    socket) in ``Redis.__init__``; the pool is rebuilt from that mapping rather
    than repeating it here.  In a cluster, its connections go to the master
    that owns the app's slot (:class:`conveyor._redis_cluster.SlotConnection`).
    """
    if sentinel is not None:
        return _sentinel_client(kwargs, sentinel)
    template = redis.Redis(**kwargs).connection_pool  # opens no connection
    connection_class: Any = template.connection_class
    extra: dict[str, Any] = {}
    if cluster is not None:
        from conveyor._redis_cluster import SlotConnection, SlotOwner, SlotSSLConnection

        tls = issubclass(connection_class, redis.SSLConnection)
        connection_class = SlotSSLConnection if tls else SlotConnection
        extra["slot_owner"] = SlotOwner(cluster, template.connection_kwargs, tls)
    pool = DroppingPool(connection_class=connection_class,
                        max_connections=template.max_connections,
                        **template.connection_kwargs, **extra)
    return redis.Redis(connection_pool=pool)


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
        pid = current_pid()
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
                    self._client = new_client(self.options.client_kwargs, self.options.sentinel,
                                              self.options.cluster)
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


def _slot_not_served(error: BaseException) -> bool:
    # Only a cluster connection raises SlotNotServed, and it loads the module first.
    cluster = sys.modules.get("conveyor._redis_cluster")
    return cluster is not None and isinstance(error, cluster.SlotNotServed)


def failed_before_sending(error: BaseException) -> bool:
    """True when redis-py could not even connect, so no command reached the server.

    A refused or timed-out connect and a server still loading its data set
    both fail before anything runs; a connection that breaks after the
    command was written leaves the outcome unknown.
    """
    if isinstance(error, redis.BusyLoadingError | MasterNotFoundError) or _slot_not_served(error):
        return True  # (no master known to the sentinels, or the slot moved: nothing ran)
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
    commands per task) call this instead, and a Conveyor pool lends the
    connection without redis-py's checkout path (:func:`lend`).  An error
    reply is raised and the connection stays usable; any other failure while
    sending or reading (a broken socket, a timeout, an interrupt) makes
    redis-py's connection disconnect itself before it goes back to the pool,
    so no later caller reads this command's reply, and the pool drops its
    idle siblings (``tests/integration/test_redis_call.py``).
    """
    pool = client.connection_pool
    conn = lend(pool)
    try:
        packed = _pack(args)
        if packed is None:
            conn.send_command(*args)
            return conn.read_response()
        return exchange(conn, packed)
    finally:
        give_back(pool, conn)


def call_packed(client: redis.Redis, packed: bytes) -> Any:
    """:func:`call` for a command already packed (a send path that keeps its
    constant arguments packed, ``RedisBroker.sender``)."""
    pool = client.connection_pool
    if not isinstance(pool, _DropsIdleOnFailure):
        conn = pool.get_connection()
        try:
            return exchange(conn, packed)
        finally:
            pool.release(conn)
    conn = pool.lend()  # lend() and give_back() without their dispatch: one call each fewer
    try:
        return exchange(conn, packed)
    finally:
        pool.give_back(conn)


def exchange(conn: Any, packed: bytes) -> Any:
    """Write one packed command on a lent connection and read its raw reply.

    redis-py's ``send_packed_command`` and ``read_response`` wrap the two
    socket calls in a health check, a per-call error text naming the host,
    protocol dispatch and the parser's own wrappers: ~2.5 µs of the ~16 µs a
    small command costs the client here (``docs/performance.md``, round two,
    fourth pass).  For redis-py's own connection classes with the hiredis
    parser under RESP2 (what Conveyor configures) this does the socket work
    itself, with redis-py's outcomes: an error reply is raised and the
    connection stays usable (a connection-class error, ``LOADING``, also
    disconnects it, as redis-py does); a timeout raises ``TimeoutError``
    and any other socket error or interrupt disconnects the connection
    before it propagates; the health-check deadline moves on as after
    redis-py's read.  Any other connection (Sentinel's, a cluster slot's,
    a subclass, the Python parser) and a connection due for its health
    check take redis-py's path.
    """
    parser = _direct_parser(conn)
    interval = conn.health_check_interval
    sock = conn._sock
    if (parser is None or sock is None or parser._reader is None
            or (interval and time.monotonic() > conn.next_health_check)):
        conn.send_packed_command((packed,))
        return conn.read_response()
    try:
        if sock.__class__ is _PLAIN_SOCKET:
            _write(sock, packed)
        else:
            sock.sendall(packed)
    except BaseException as exc:
        conn.disconnect()
        if isinstance(exc, OSError):
            raise _socket_error(exc, "writing to socket") from exc
        raise
    reader = parser._reader
    try:
        reply = reader.gets()
        while reply is _NOT_ENOUGH_DATA:  # the reader's marker: not a whole reply yet
            buffer = parser._buffer
            got = sock.recv_into(buffer)
            if not got:
                raise redis.ConnectionError("Connection closed by server.")
            reader.feed(buffer, 0, got)
            reply = reader.gets()
    except BaseException as exc:
        conn.disconnect()
        if isinstance(exc, OSError):
            raise _socket_error(exc, f"reading from {_where(conn)}") from exc
        raise
    if interval:
        conn.next_health_check = time.monotonic() + interval
    if isinstance(reply, redis.ResponseError):
        raise reply
    if isinstance(reply, redis.ConnectionError) or (
            reply.__class__ is list and reply and isinstance(reply[0], redis.ConnectionError)):
        conn.disconnect()
        raise reply if isinstance(reply, redis.ConnectionError) else reply[0]
    return reply


# Sockets whose descriptor os.write takes (on Windows a socket is no file descriptor).
_PLAIN_SOCKET: Any = socket.socket if os.name == "posix" else None


def _write(sock: socket.socket, packed: bytes) -> None:
    """``sock.sendall(packed)`` for a plain TCP or unix socket, one system call fewer.

    A socket with a timeout polls before each ``send`` to honour it; a
    command that fits the socket's send buffer (every hot one) goes out
    with one ``write`` that cannot block (the descriptor is non-blocking
    when a timeout is set), and only what did not fit goes through
    ``sendall`` with its timeout.
    """
    if sock.gettimeout() is None:  # a blocking descriptor: write() could block untimed
        sock.sendall(packed)
        return
    try:
        sent = os.write(sock.fileno(), packed)
    except BlockingIOError:
        sent = 0
    if sent < len(packed):
        sock.sendall(memoryview(packed)[sent:])


def _socket_error(exc: OSError, doing: str) -> redis.RedisError:
    """redis-py's exception for a failed socket call: a timeout of the socket's own
    (no errno) is ``TimeoutError``, anything else (ETIMEDOUT included) ``ConnectionError``."""
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return redis.TimeoutError(f"Timeout {doing}")
    return redis.ConnectionError(f"Error {exc.errno} while {doing}. {exc.strerror or exc}.")


def _where(conn: Any) -> str:
    where = getattr(conn, "_host_error", None)
    return where() if where is not None else "Redis"


#: Per connection class: may :func:`exchange` bypass its send and read methods?
_DIRECT_CLASSES: dict[type, bool] = {}


def _direct_parser(conn: Any) -> Any:
    """``conn``'s hiredis parser when :func:`exchange` may do the socket work, else None."""
    cls = conn.__class__
    direct = _DIRECT_CLASSES.get(cls)
    if direct is None:
        base = redis.connection.AbstractConnection
        direct = _DIRECT_CLASSES[cls] = bool(
            _HiredisParser is not None
            and cls.send_packed_command is base.send_packed_command
            and cls.read_response is base.read_response)
    if not direct:
        return None
    parser = conn._parser
    if parser.__class__ is not _HiredisParser or conn.protocol in (3, "3"):
        return None
    # The reader and buffer are the parser's own attributes, not redis-py's API:
    # a release that renames them makes every command take redis-py's path.
    if getattr(parser, "_buffer", None) is None or not hasattr(parser, "_reader"):
        return None
    return parser


_PLAIN = (bytes, str, int, float)


def _pack(args: tuple[Any, ...]) -> bytes | None:
    """``args`` as one RESP command, or None when redis-py's packer must do it.

    redis-py's packer checks every argument for a memoryview, splits the
    command name on spaces and encodes each argument in Python before handing
    them to hiredis: ~5 µs of an enqueue's ~110 µs.  Conveyor's hot commands
    are built of plain bytes, text and numbers, which hiredis encodes itself
    (text as UTF-8, as redis-py's default encoder does; a float with 17
    significant digits, which parses back to the same double).  Anything else
    (a bool redis-py refuses, a memoryview) takes redis-py's path, errors and all.
    """
    if _hiredis_pack is None:
        return None
    for arg in args:
        if type(arg) not in _PLAIN:
            return None
    return _hiredis_pack(args)


def can_pack() -> bool:
    """Can commands be packed here (hiredis is installed)?"""
    return _hiredis_pack is not None


def packed_head(args: tuple[Any, ...]) -> bytes:
    """The RESP bytes of a command of ``args`` and two arguments more, up to those
    two: :func:`pack_tail` packs them, so ``head + pack_tail(a, b)`` is the
    whole command as :func:`call` would pack it (needs :func:`can_pack`)."""
    assert _hiredis_pack is not None
    whole = _hiredis_pack((*args, b"", b""))
    return whole[:-2 * len(_EMPTY_BULK)]


_EMPTY_BULK = b"$0\r\n\r\n"


def pack_tail(text: str, data: bytes) -> bytes:
    """The last two arguments of a :func:`packed_head` command: ``text`` (as UTF-8)
    and ``data``, as hiredis would pack them."""
    encoded = text.encode()
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(encoded), encoded, len(data), data)


def call_many(client: redis.Redis, *commands: tuple[Any, ...]) -> list[Any]:
    """Send several commands in one write on one pooled connection; every reply, in order.

    Redis runs a connection's commands one after another, so a command queued
    behind a blocking one (``BLPOP``) runs the moment the block ends, with no
    round trip back to the client in between.  Every reply is read before
    returning (an error reply is returned in its place, as the exception),
    so the connection goes back to the pool in step; any other failure
    disconnects it, as in :func:`call`.
    """
    pool = client.connection_pool
    conn = lend(pool)
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.exceptions.ResponseError as exc:
                replies.append(exc)
        return replies
    finally:
        give_back(pool, conn)
