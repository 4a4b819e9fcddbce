"""Redis Cluster: every key of one app on one hash slot, reached on the master that owns it.

``redis+cluster://[user:password@]host:port,host2:port2[/0][?prefix=…]``
names one or more nodes of a cluster (the others are learnt from
``CLUSTER SLOTS``); the scheme follows Celery's ``db+``/``sqla+`` form of
"this store, over that transport" (docs/decisions/0026-redis-cluster.md).

**One slot per app.**  The broker's and the stores' Lua scripts touch many
keys in one call (a queue, its lease set, its delayed set, the message
hash), and a cluster runs a script only if every key it touches is in one
slot owned by the node that runs it.  So the key prefix is made a hash tag
(:func:`hash_tagged`: ``conveyor`` becomes ``{conveyor}``; a prefix that
already holds a tag is kept) and every key of the app, ``{conveyor}:…``,
hashes like the tag alone.  The price: one app's data and load sit on one
master.  For that app a cluster gives failover (a replica of that master
takes over), not sharding; several apps, or several prefixes, land on
different slots and so spread over the masters.

**A pinned connection, not ``redis.cluster.RedisCluster``.**  All of one
app's commands go to one node, so routing each command buys nothing, while
RedisCluster's pipelines (no ``MULTI``), pub/sub and connections differ from
``redis.Redis``'s, which Conveyor's hot paths use directly (one pooled
connection per call, pipelined ``EVALSHA`` with ``WAIT``).  A
:class:`SlotConnection` asks the cluster which master owns the slot each time
it connects (as redis-py's Sentinel connections ask the sentinels), then
talks to that master as to a single server.  A reply saying the slot is not
served there (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``,
``READONLY``: a failover or a resharding happened) closes the connection
and raises :class:`SlotNotServed`, a connection error whose command did not
run; the pool drops its idle siblings and the next connection asks again.

Plain ``PUBLISH``/``SUBSCRIBE`` reach every node of a cluster, so the
control channel's pub/sub works unchanged on the pinned connection.

**TLS** (``ssl=true``, Celery's ``broker_use_ssl``): the question and the
pinned connection both go over TLS with the same certificates
(:class:`SlotSSLConnection`); a cluster started with ``tls-cluster yes``
announces its TLS ports in ``CLUSTER SLOTS``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry

from conveyor._redis_options import CLUSTER_SCHEME
from conveyor.exceptions import ConfigurationError

__all__ = ["CLUSTER_SCHEME", "ClusterOptions", "SlotConnection", "SlotNotServed", "SlotOwner",
           "SlotSSLConnection", "cluster_options", "hash_tagged"]

DEFAULT_CLUSTER_PORT = 6379

# Replies meaning "this node does not serve the slot now"; none ran the command.
# (MovedError is an AskError.)
_NOT_SERVED = (AskError, TryAgainError, ClusterDownError, ReadOnlyError)
# A script's command refused while the cluster is down (a master lost, no replica
# promoted yet) comes back as a plain error, not CLUSTERDOWN: nothing in it ran
# (Redis checks the cluster state before each command, and refuses the first).
_CLUSTER_DOWN_IN_SCRIPT = "while the cluster is down"


class SlotNotServed(redis.ConnectionError):
    """The node no longer serves the app's slot; the command did not run."""


@dataclass(frozen=True)
class ClusterOptions:
    """Some nodes of a cluster, and the slot of the app's keys."""

    nodes: tuple[tuple[str, int], ...]
    slot: int


def hash_tagged(prefix: str) -> str:
    """``prefix`` as a hash tag, so that ``prefix:anything`` hashes like ``prefix``.

    A prefix that already holds a non-empty ``{tag}`` is kept as it is.
    """
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    if start >= 0 and end > start + 1:
        return prefix
    return "{" + prefix + "}"


def cluster_options(url: str, netloc: str, prefix: str) -> ClusterOptions:
    """The nodes of a ``redis+cluster://`` URL's ``host:port,host:port`` list."""
    hosts = netloc.rpartition("@")[2]
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise ConfigurationError(
                f"{url!r}: a redis+cluster:// URL lists nodes as host:port,host:port")
        try:
            nodes.append((host.strip("[]"), int(port) if port else DEFAULT_CLUSTER_PORT))
        except ValueError:
            raise ConfigurationError(f"{url!r}: bad port in {item!r}") from None
    return ClusterOptions(tuple(nodes), key_slot(prefix.encode()))


class SlotOwner:
    """Finds the master that owns one slot, asking the nodes it knows in turn.

    Nodes named in the URL come first, then every node learnt from earlier
    answers; the last owner is asked last, since after a failover it is the
    one most likely gone.  The question uses short timeouts: an unreachable
    node must not cost a full ``socket_connect_timeout`` per connect.
    """

    def __init__(self, cluster: ClusterOptions, connection_kwargs: Mapping[str, Any],
                 tls: bool = False) -> None:
        self.slot = cluster.slot
        self._seeds = list(cluster.nodes)
        self._learnt: list[tuple[str, int]] = []
        self._owner: tuple[str, int] | None = None
        self._lock = threading.Lock()
        timeout = min(1.0, float(connection_kwargs.get("socket_connect_timeout") or 1.0))
        self._kwargs: dict[str, Any] = {
            "username": connection_kwargs.get("username"),
            "password": connection_kwargs.get("password"),
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0), "protocol": 2,
        }
        if tls:  # the pinned connections' own TLS arguments, certificates included
            self._kwargs.update(ssl=True, **{key: value for key, value in connection_kwargs.items()
                                             if key.startswith("ssl_")})

    def _candidates(self) -> list[tuple[str, int]]:
        with self._lock:
            known = list(dict.fromkeys([*self._seeds, *self._learnt]))
            owner = self._owner
        if owner in known:
            known.remove(owner)
            known.append(owner)
        return known

    def find(self) -> tuple[str, int]:
        """The owner's ``(host, port)``; ``redis.ConnectionError`` if no node says."""
        failures: list[str] = []
        for host, port in self._candidates():
            try:
                owner = self._ask(host, port)
            except (redis.RedisError, OSError) as exc:
                failures.append(f"{host}:{port}: {exc}")
                continue
            if owner is not None:
                return owner
            failures.append(f"{host}:{port}: no master serves slot {self.slot}")
        raise redis.ConnectionError(
            f"Error connecting to the Redis Cluster master of slot {self.slot}: "
            + "; ".join(failures))

    def _ask(self, host: str, port: int) -> tuple[str, int] | None:
        client = redis.Redis(host=host, port=port, **self._kwargs)
        try:
            ranges = client.execute_command("CLUSTER SLOTS", **{"NEVER_DECODE": True})
        finally:
            client.close()
        owner, nodes = _read_slots(ranges, self.slot, host)
        with self._lock:
            self._learnt = nodes
            if owner is not None:
                self._owner = owner
        return owner


def _read_slots(ranges: Any, slot: int, asked: str) -> tuple[tuple[str, int] | None,
                                                             list[tuple[str, int]]]:
    """The master of ``slot`` and every node in a raw ``CLUSTER SLOTS`` reply.

    A node announced without an address (``""``) is at the address asked.
    """
    owner = None
    nodes: list[tuple[str, int]] = []
    for entry in ranges or []:
        start, end, *members = entry
        for member in members:
            node = (_text(member[0]) or asked, int(member[1]))
            nodes.append(node)
            if owner is None and member is members[0] and int(start) <= slot <= int(end):
                owner = node
    return owner, list(dict.fromkeys(nodes))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SlotConnection(redis.Connection):
    """A connection to whichever master owns the app's slot when it connects."""

    def __init__(self, *, slot_owner: SlotOwner, **kwargs: Any) -> None:
        self.slot_owner = slot_owner
        super().__init__(**kwargs)

    def connect(self) -> None:
        if self._sock is None:
            self.host, self.port = self.slot_owner.find()
        super().connect()

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except (*_NOT_SERVED, ResponseError) as exc:
            if not isinstance(exc, _NOT_SERVED) and _CLUSTER_DOWN_IN_SCRIPT not in str(exc):
                raise
            self.disconnect()
            raise SlotNotServed(
                f"{self.host}:{self.port} does not serve slot {self.slot_owner.slot} now "
                f"({exc}); the command did not run") from exc


class SlotSSLConnection(SlotConnection, redis.SSLConnection):
    """:class:`SlotConnection` over TLS: the owner is found first, then the TLS
    handshake checks that owner's certificate (its address is the hostname)."""
