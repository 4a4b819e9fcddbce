"""The Redis broker: the scale-out choice, a few round trips per batch.

Every operation that changes more than one key is one Lua script
(``redis_scripts/*.lua``, with ``_common.lua`` prepended), so it is atomic and
costs one round trip whatever the batch size.  Scripts read the server's clock
(``TIME``): lease deadlines and ETAs are judged by one clock, never by the
clients', so a worker with a skewed clock neither runs a delayed task early
nor has its lease expire under it.  ETAs arrive as absolute Unix times from
producers, and that is accepted.  Requires Redis 7.0 or later (``LMPOP``).
Scripts build their keys from the prefix, with no declared keys; in a Redis
Cluster (``redis+cluster://``) the prefix is a hash tag, so every key is in
one slot and the client talks only to the master that owns it
(:mod:`conveyor._redis_cluster`).

Key layout
==========

``P`` is the key prefix (``?prefix=`` in the URL, default ``conveyor``),
``{q}`` a queue name, ``{p}`` a priority 0..9 (0 most urgent, served first);
hash fields are message ids.
Nothing here has a Redis expiry unless said: entries are removed by the
operation that ends them.

``P:msg`` (hash)
    id -> body.  Written by enqueue and replay_dead; removed by ack,
    dead_letter and purge.  Its presence is the "already stored" check.
``P:prio`` (hash)
    id -> priority, only for priorities other than 0.  Lives as ``P:msg``.
``P:deliv`` (hash)
    id -> how many times the message was handed out.  Reserve adds one,
    ``requeue(count=False)`` takes one back; lives as ``P:msg``.
``P:token`` (hash)
    id -> token of the current lease.  Set by reserve; removed by ack,
    requeue, dead_letter and when an expired lease is reclaimed, which is
    what fences a stale holder.
``P:ready:{q}:{p}`` (list)
    Ids ready now, next out at the head.  Enqueue and due delayed messages
    RPUSH; requeue and reclaimed leases LPUSH (they were first in line once);
    reserve pops.
``P:delayed:{q}`` (sorted set)
    Id scored by due time (server ms).  Enqueue with a future ETA, requeue
    with a delay.
``P:inflight:{q}`` (sorted set)
    Id scored by lease deadline (server ms).  Reserve adds, extend moves it,
    ack/requeue/dead_letter remove it, reserve reclaims it when it lapses.
``P:wake:{q}`` (list)
    At most one token, pushed when a message is stored for the queue (or a
    consumer leaves messages behind); idle consumers BLPOP it.
``P:dead:{q}`` (sorted set)
    Dead-letter id scored by failure time (server ms), for paging newest first.
``P:deadmsg:{q}`` (hash)
    Dead-letter id -> ``failed_ms:priority:reason_bytes:`` + reason + body.
    Both dead-letter keys are kept until replay_dead or discard_dead.
``P:queues`` (set)
    Every queue name ever enqueued to; an enqueue adds it when it pushes the
    queue's wake token (a waiting token means the name is there already).
``P:idem:{key}`` (string)
    The id owning an idempotency key; SET NX PX by enqueue, expires after the
    envelope's ``idempotency_ttl`` (default one day).
``P:revoked:{task_id}`` (string)
    ``1`` (terminate) or ``0``; written by revoke, expires after its ttl.
``P:mutex:{name}`` (string)
    The holder of a named lease (beat's leader); expires after its ttl.
``P:rate:{name}`` (string)
    A global rate limit's next free start slot (server microseconds);
    written by take_rate_slot, expires when the bucket is full again.

A message lives in exactly one of ``ready``, ``delayed`` or ``inflight`` of
its queue, and in ``P:msg`` while it does.  Reserve first moves due delayed
messages to the back of their ready list and lapsed leases to the front
(bounded, 1,000 per queue per call; only when the set's first score is due),
then pops.

Why one list per (queue, priority) rather than one sorted set per queue
------------------------------------------------------------------------

Pushing and popping a list is O(1) and needs no sequence counter for FIFO
order, and ``LMPOP`` takes a whole batch from the first non-empty list of
a key list ordered by priority, then queue order: exactly the contract's
order, in one command.  A sorted set would need a score combining priority
and a global sequence number, O(log n) per operation, more memory per
entry, and a merge across queues in Lua.  The price is ten keys per queue
to name in reserve, ``stats`` and ``purge``.

Waiting without polling
-----------------------

An idle consumer blocks in ``BLPOP`` on the wake lists of its queues.  Its
timeout is capped by the time until the earliest delayed message or lease of
those queues (which the reserve script returns, in server time) and by one
second, after which it runs reserve again.  Each wake list keeps at most one
token; a consumer that takes a full batch and leaves messages behind pushes a
new token, so a burst wakes consumers one after another instead of all at once,
and a token consumed by a consumer that then found nothing costs only that one
extra reserve.

Failures
--------

redis-py's own retries are off (see :mod:`conveyor._redis`).  Writes raise
:class:`~conveyor.exceptions.BrokerUnavailable` once, naming the server and
whether the write ran; reads (stats, queues, dead letters, revocations,
lease holders) retry a few times with jittered backoff first.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from conveyor._lua import LuaScript, load, run, run_and_wait, script_file
from conveyor._redis import (
    CONNECTION_ERRORS,
    ClientHolder,
    RedisOptions,
    as_text,
    call_many,
    call_packed,
    can_pack,
    give_back,
    lend,
    packed_head,
    parse_redis_url,
    retry_read,
    translate_errors,
)
from conveyor.brokers.base import (
    MAX_PRIORITY,
    Broker,
    DeadLetter,
    Delivery,
    Envelope,
    QueueStats,
)
from conveyor.exceptions import BrokerError, BrokerUnavailable

DEFAULT_IDEMPOTENCY_TTL = 86400.0
ENQUEUE_CHUNK = 1000  # messages per script call: bounds how long one call holds the server
MAX_BLOCK = 1.0  # longest BLPOP before reserve runs again (catches anything missed)
_SCRIPT_NAMES = (
    "enqueue", "enqueue_plain", "reserve", "ack", "extend", "requeue", "dead_letter", "stats",
    "purge", "dead_letters", "replay_dead", "discard_dead", "acquire_lease", "release_lease",
    "take_rate_slot",
)
_ENQUEUE_RETRY_HINT = "sending the same envelopes again is safe: message ids are deduplicated"
_RESERVE_RETRY_HINT = "if it ran, what it leased is handed out again when the lease runs out"


#: Each script file after ``_common.lua`` (shared helpers), read once;
#: ``enqueue_one.lua``, a ``.delay()``'s, builds its few keys itself.
_SCRIPTS = {name: script_file("conveyor.brokers", f"redis_scripts/{name}.lua",
                              prelude="redis_scripts/_common.lua") for name in _SCRIPT_NAMES}
_SCRIPTS["enqueue_one"] = script_file("conveyor.brokers", "redis_scripts/enqueue_one.lua")


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


class RedisBroker(Broker):
    """Broker on one Redis server; see the module docstring for the layout."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self._options: RedisOptions = parse_redis_url(url, options)
        self._prefix = self._options.prefix
        self._holder = ClientHolder(self._options)
        self._scripts: dict[str, LuaScript] = dict(_SCRIPTS)
        # BLPOP must return before the socket read times out.
        self._max_block = min(MAX_BLOCK, self._options.socket_timeout / 2)

    @property
    def socket_timeout(self) -> float:
        """The longest any one call blocks on a connection (see conveyor._redis)."""
        return self._options.socket_timeout

    # -- plumbing ----------------------------------------------------------
    def _run(self, name: str, *args: Any) -> Any:
        try:
            return run(self._holder.client, self._scripts[name], [], [self._prefix, *args])
        except ResponseError as exc:
            self._refuse_old_server(exc)
            raise

    def _refuse_old_server(self, exc: ResponseError) -> None:
        """Raise a readable error for a script refused for a command the server lacks."""
        if "unknown" in str(exc).lower() and "command" in str(exc).lower():
            raise BrokerError(
                f"Redis at {self._options.address} lacks a command the broker needs "
                f"(Redis 7.0 or later is required): {exc}"
            ) from exc

    @contextmanager
    def _errors(self, action: str, retry_hint: str = "", read: bool = False) -> Iterator[None]:
        with translate_errors(self._options.address, action, BrokerUnavailable, retry_hint,
                              changes_nothing=read):
            yield

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    # -- producing -------------------------------------------------------
    def enqueue(self, envelope: Envelope) -> str:
        """One script call: ``enqueue_one.lua`` for a message sent now without an
        idempotency key (a plain ``.delay()``), ``enqueue.lua`` otherwise."""
        name, args = _enqueue_call(envelope)
        wanted = self._options.wait_replicas
        if not wanted:
            try:
                reply = self._run(name, *args)
            except CONNECTION_ERRORS:  # the same translation, entered only on failure
                with self._errors("enqueue", _ENQUEUE_RETRY_HINT):
                    raise
            return as_text(reply[1]) if reply else envelope.id
        with self._errors("enqueue", _ENQUEUE_RETRY_HINT):
            reply, confirmed = run_and_wait(
                self._holder.client, self._scripts[name], [self._prefix, *args], wanted,
                self._options.wait_timeout)
            self._check_replicated(confirmed, "enqueue")
        return as_text(reply[1]) if reply else envelope.id

    def sender(self, queue: str, priority: int) -> Callable[[str, bytes], str] | None:
        """``enqueue_one.lua`` with the call packed once: the
        ``EVALSHA``, script, prefix, queue and priority are RESP bytes kept
        here, and each send appends the id and body (what :meth:`enqueue`
        sends for such an envelope, byte for byte, without building the
        envelope, the argument list or the command per call).  None when each
        enqueue must also wait for replicas (``wait_replicas``)."""
        if self._options.wait_replicas or "\n" in queue or not can_pack():
            return None
        script = self._scripts["enqueue_one"]
        prio = _priority(Envelope("", queue, b"", priority))
        head = packed_head(("EVALSHA", script.sha, 0, self._prefix, queue, prio))
        holder = self._holder

        def send(message_id: str, body: bytes) -> str:
            encoded = message_id.encode()  # as pack_tail packs them, in one step
            packed = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n" % (head, len(encoded), encoded,
                                                           len(body), body)
            try:
                try:
                    reply = call_packed(holder.client, packed)
                except NoScriptError:
                    load(holder.client, script)
                    reply = call_packed(holder.client, packed)
            except CONNECTION_ERRORS:  # the same translation as enqueue's
                with self._errors("enqueue", _ENQUEUE_RETRY_HINT):
                    raise
            except ResponseError as exc:
                self._refuse_old_server(exc)
                raise
            return as_text(reply[1]) if reply else message_id

        return send

    def _check_replicated(self, confirmed: int, action: str) -> None:
        """Refuse an enqueue fewer replicas confirmed than ``wait_replicas`` asks."""
        wanted = self._options.wait_replicas
        if confirmed < wanted:
            raise BrokerUnavailable(
                f"Redis at {self._options.address}: {action} stored on the master but "
                f"confirmed by {confirmed} of the {wanted} replicas wait_replicas asks for "
                f"within {self._options.wait_timeout:g}s, so a failover could lose it; "
                f"{_ENQUEUE_RETRY_HINT}")

    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[str]:
        """One script call per 1,000 messages, each atomic on its own, two in flight.

        A chunk whose messages share a queue and priority and have no ETA and
        no idempotency key (a group's members) goes to ``enqueue_plain.lua``,
        which needs no per-message header; any other to ``enqueue.lua``.

        Chunk *k+1* is packed and sent before chunk *k*'s reply is read, so
        Redis runs one chunk while Python prepares the next.  If the server
        goes away part way, the error says how many messages were already
        stored; sending them all again is safe (ids dedupe).  A server that
        lost the script (restart, ``SCRIPT FLUSH``) gets it again and the
        chunks from the first refused one are sent again (dedupe, again).
        """
        owners = [envelope.id for envelope in envelopes]
        if not owners:
            return owners
        try:
            self._enqueue_pipelined(envelopes, 0, owners)
        except _ScriptMissing as missing:
            with self._errors("enqueue_many (loading the script)", _ENQUEUE_RETRY_HINT):
                for name in ("enqueue", "enqueue_plain"):
                    load(self._holder.client, self._scripts[name])
            self._enqueue_pipelined(envelopes, missing.start, owners)
        return owners

    def _enqueue_pipelined(self, envelopes: Sequence[Envelope], first: int,
                           owners: list[str]) -> None:
        """Send chunks from ``first`` on, reading each reply after sending the next."""
        pool = self._holder.client.connection_pool
        pending: list[tuple[int, int]] = []  # (start, size) sent, reply not read yet
        with self._chunk_errors(first, min(ENQUEUE_CHUNK, len(envelopes) - first), pending):
            conn = lend(pool)
        try:
            for start in range(first, len(envelopes), ENQUEUE_CHUNK):
                chunk = envelopes[start:start + ENQUEUE_CHUNK]
                with self._chunk_errors(start, len(chunk), pending):
                    name, args = _chunk_call(chunk)
                    conn.send_command("EVALSHA", self._scripts[name].sha, 0, self._prefix, *args)
                pending.append((start, len(chunk)))
                if len(pending) == 2:
                    self._read_chunk(conn, pending, owners)
            while pending:
                self._read_chunk(conn, pending, owners)
            self._wait_on(conn)
        finally:
            if pending:  # replies left unread would answer the next caller's command
                conn.disconnect()
            give_back(pool, conn)

    def _wait_on(self, conn: Any) -> None:
        """``WAIT`` after a batch, on the connection that wrote it (``wait_replicas``)."""
        wanted = self._options.wait_replicas
        if not wanted:
            return
        with self._errors("enqueue_many (waiting for replicas)", _ENQUEUE_RETRY_HINT):
            conn.send_command("WAIT", wanted, max(1, int(self._options.wait_timeout * 1000)))
            confirmed = int(conn.read_response())
        self._check_replicated(confirmed, "enqueue_many")

    def _read_chunk(self, conn: Any, pending: list[tuple[int, int]],
                    owners: list[str]) -> None:
        start, size = pending[0]
        with self._chunk_errors(start, size, pending):
            try:
                reply = conn.read_response()
            except NoScriptError as exc:
                raise _ScriptMissing(start) from exc
        pending.pop(0)
        for i in range(0, len(reply), 2):
            owners[start + int(reply[i]) - 1] = as_text(reply[i + 1])

    @contextmanager
    def _chunk_errors(self, start: int, size: int,
                      pending: list[tuple[int, int]]) -> Iterator[None]:
        stored = pending[0][0] if pending else start  # chunks before it were confirmed
        hint = _ENQUEUE_RETRY_HINT
        if stored:
            hint = f"messages 1..{stored} were stored; {hint}"
        with self._errors(f"enqueue_many of messages {start + 1}..{start + size}", hint):
            yield

    # -- consuming -------------------------------------------------------
    def reserve(
        self, queues: Sequence[str], count: int, lease: float, timeout: float
    ) -> list[Delivery]:
        """Lease up to ``count`` messages, blocking (not polling) up to ``timeout`` s."""
        if count <= 0 or not queues:
            return []
        deadline = time.monotonic() + max(0.0, timeout)
        wake_keys = self.wake_keys(queues)
        with self._errors("reserve", _RESERVE_RETRY_HINT):
            got, hint = self._reserve_once(queues, count, lease)
        while True:
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            block = min(remaining, self._max_block, hint if hint is not None else remaining)
            with self._errors("reserve", _RESERVE_RETRY_HINT):
                if block >= 0.001:
                    got, hint = self._block_then_reserve(wake_keys, block, queues, count, lease)
                else:
                    got, hint = self._reserve_once(queues, count, lease)

    def _reserve_once(
        self, queues: Sequence[str], count: int, lease: float
    ) -> tuple[list[Delivery], float | None]:
        token_base = secrets.token_hex(8) + "-"
        reply = self._run("reserve", count, _ms(lease), token_base, *queues)
        return _leased(reply, token_base)

    def _block_then_reserve(
        self, wake_keys: list[str], block: float, queues: Sequence[str], count: int,
        lease: float,
    ) -> tuple[list[Delivery], float | None]:
        """``BLPOP`` on the wake lists and the reserve script behind it, sent as one write.

        Redis runs the reserve the moment the block ends (a token arrived or
        the timeout passed), so a woken consumer has its messages one round
        trip after the enqueue instead of two.  Losing a wake token to a
        broken connection is harmless; the reserve's own failure is any
        reserve's (what it leased is handed out again when the lease runs out).
        """
        token_base = secrets.token_hex(8) + "-"
        script = self._scripts["reserve"]
        _, reply = call_many(
            self._holder.client,
            ("BLPOP", *wake_keys, f"{block:.3f}"),
            ("EVALSHA", script.sha, 0, self._prefix, count, _ms(lease), token_base, *queues),
        )
        if isinstance(reply, ResponseError):
            # NOSCRIPT after a restart or SCRIPT FLUSH (the plain call loads
            # it), or an error the plain call reports in its own words.
            return self._reserve_once(queues, count, lease)
        return _leased(reply, token_base)

    # -- for a broker that spreads queues over several of these (redis_sharded) --
    def reserve_now(
        self, queues: Sequence[str], count: int, lease: float
    ) -> tuple[list[Delivery], float | None]:
        """One reserve that does not wait, and the seconds until one of these queues
        has something due (a delayed message, a lease running out; None: nothing)."""
        with self._errors("reserve", _RESERVE_RETRY_HINT):
            return self._reserve_once(queues, count, lease)

    def wake_keys(self, queues: Sequence[str]) -> list[str]:
        """The lists an idle consumer of ``queues`` blocks on (``P:wake:{q}``)."""
        return [self._key("wake", queue) for queue in queues]

    @property
    def max_block(self) -> float:
        """The longest one blocking wait may last on this broker's connections."""
        return self._max_block

    @property
    def prefix(self) -> str:
        """The key prefix, a hash tag under ``redis+cluster://``."""
        return self._prefix

    @property
    def address(self) -> str:
        """The server, as error messages name it."""
        return self._options.address

    def new_connection(self) -> Any:
        """A connection of the pool's kind outside the pool, for a wait that may be
        abandoned (closing it is the only way to end a ``BLPOP`` early)."""
        pool = self._holder.client.connection_pool
        return pool.connection_class(**pool.connection_kwargs)

    @staticmethod
    def _lease_args(deliveries: Sequence[Delivery]) -> list[str]:
        args: list[str] = []
        for d in deliveries:
            args.extend((d.id, d.token, d.queue))
        return args

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []
        with self._errors("ack"):
            reply = self._run("ack", *self._lease_args(deliveries))
        return [bool(flag) for flag in reply]

    def requeue(self, delivery: Delivery, delay: float = 0.0, count: bool = False) -> bool:
        with self._errors("requeue"):
            done = self._run("requeue", delivery.id, delivery.token, delivery.queue,
                             _ms(delay), "1" if count else "0")
        return bool(done)

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        with self._errors("dead_letter"):
            done = self._run("dead_letter", delivery.id, delivery.token, delivery.queue,
                             reason.encode())
        return bool(done)

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        if not deliveries:
            return []
        with self._errors("extend"):
            reply = self._run("extend", _ms(lease), *self._lease_args(deliveries))
        return [bool(flag) for flag in reply]

    # -- inspection and repair --------------------------------------------
    def queues(self) -> list[str]:
        with self._errors("queues", read=True):
            names = retry_read(lambda: self._holder.client.smembers(self._key("queues")))
        return sorted(as_text(name) for name in names)

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        names = self.queues() if queues is None else list(queues)
        if not names:
            return []
        with self._errors("stats", read=True):
            flat = retry_read(lambda: self._run("stats", *names))
        return [
            QueueStats(name, int(flat[i]), int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]),
                       None if int(flat[i + 4]) < 0 else int(flat[i + 4]) / 1000)
            for name, i in zip(names, range(0, len(flat), 5), strict=True)
        ]

    def purge(self, queue: str) -> int:
        with self._errors("purge"):
            return int(self._run("purge", queue))

    def dead_letters(self, queue: str, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        with self._errors("dead_letters", read=True):
            flat = retry_read(lambda: self._run("dead_letters", queue, max(0, offset), limit))
        return [_unpack_dead(queue, flat[i].decode(), flat[i + 1])
                for i in range(0, len(flat), 2)]

    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        with self._errors("replay_dead"):
            return int(self._run("replay_dead", queue, *(ids or ())))

    def discard_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        with self._errors("discard_dead"):
            return int(self._run("discard_dead", queue, *(ids or ())))

    # -- control plane ---------------------------------------------------
    def revoke(self, ids: Sequence[str], ttl: float, terminate: bool = False) -> None:
        """One key per task id with Redis's own expiry; one pipelined round trip."""
        if not ids:
            return
        pipe = self._holder.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.set(self._key("revoked", task_id), "1" if terminate else "0", px=max(1, _ms(ttl)))
        with self._errors("revoke"):
            pipe.execute()

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        """A single MGET, so workers can check every message of a batch cheaply."""
        if not ids:
            return {}
        keys = [self._key("revoked", task_id) for task_id in ids]
        with self._errors("revoked", read=True):
            flags = retry_read(lambda: self._holder.client.mget(keys))
        pairs = zip(ids, flags, strict=True)
        return {task_id: flag == b"1" for task_id, flag in pairs if flag is not None}

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        with self._errors("acquire_lease"):
            return bool(self._run("acquire_lease", name, holder, max(1, _ms(ttl))))

    def release_lease(self, name: str, holder: str) -> None:
        with self._errors("release_lease"):
            self._run("release_lease", name, holder)

    def lease_holder(self, name: str) -> str | None:
        with self._errors("lease_holder", read=True):
            holder = retry_read(lambda: self._holder.client.get(self._key("mutex", name)))
        return None if holder is None else as_text(holder)

    def take_rate_slot(self, limits: Sequence[tuple[str, float]], within: float) -> float:
        args: list[Any] = [max(0, math.floor(within * 1e6))]
        for name, interval in limits:
            args += [name, max(1, math.ceil(interval * 1e6))]
        with self._errors("take_rate_slot"):
            wait_us = self._run("take_rate_slot", *args)
        return int(wait_us) / 1e6

    def ping(self) -> bool:
        with self._errors("ping", read=True):
            return bool(self._holder.client.ping())

    def close(self) -> None:
        self._holder.close()


def _leased(reply: list[Any], token_base: str) -> tuple[list[Delivery], float | None]:
    """reserve.lua's deliveries, and how long until something is due (None: nothing)."""
    hint_ms = int(reply[0])
    return _read_leased(reply, token_base), (None if hint_ms < 0 else hint_ms / 1000)


def _read_leased(reply: list[Any], token_base: str) -> list[Delivery]:
    """Deliveries from reserve.lua's reply (see its header for the layout)."""
    out: list[Delivery] = []
    pos = 1
    while pos < len(reply):
        queue, priority, n = as_text(reply[pos]), int(reply[pos + 1]), int(reply[pos + 2])
        pos += 3
        for i in range(pos, pos + 4 * n, 4):
            out.append(Delivery(
                id=as_text(reply[i]), queue=queue, body=reply[i + 1],
                deliveries=int(reply[i + 2]), token=f"{token_base}{len(out) + 1}",
                priority=priority, revoked=reply[i + 3] == 1,
            ))
        pos += 4 * n
    return out


class _ScriptMissing(Exception):
    """The server answered NOSCRIPT for the chunk starting at ``start``."""

    def __init__(self, start: int) -> None:
        super().__init__(start)
        self.start = start


def _chunk_args(chunk: Sequence[Envelope]) -> list[str | bytes]:
    """enqueue.lua's arguments for a chunk: header and body of each message."""
    args: list[str | bytes] = []
    append = args.append
    for envelope in chunk:
        header, body = _envelope_args(envelope)
        append(header)
        append(body)
    return args


def _enqueue_call(env: Envelope) -> tuple[str, Sequence[Any]]:
    """The script for one envelope and its arguments after the prefix."""
    if env.eta is not None or env.idempotency_key is not None:
        return "enqueue", _envelope_args(env)
    if "\n" in env.id or "\n" in env.queue:  # refused as enqueue.lua's header would be
        _refuse_newline(env)
    return "enqueue_one", (env.queue, _priority(env), env.id, env.body)


def _chunk_call(chunk: Sequence[Envelope]) -> tuple[str, Sequence[Any]]:
    """The script for a chunk and its arguments after the prefix: enqueue_plain.lua's
    (queue, priority, then id and body each) when every message allows it."""
    queue, priority = chunk[0].queue, chunk[0].priority
    args: list[Any] = [queue, _priority(chunk[0])]
    append = args.append
    for env in chunk:
        if (env.eta is not None or env.idempotency_key is not None or env.queue != queue
                or env.priority != priority or "\n" in env.id):
            return "enqueue", _chunk_args(chunk)
        append(env.id)
        append(env.body)
    if "\n" in queue:
        _refuse_newline(chunk[0])
    # One message has a script of its own with the same arguments and reply.
    return ("enqueue_one" if len(chunk) == 1 else "enqueue_plain"), args


def _priority(env: Envelope) -> int:
    """The envelope's priority as the scripts take it: an int clamped to 0..9."""
    priority = env.priority
    if priority.__class__ is not int or not 0 <= priority <= MAX_PRIORITY:
        priority = min(max(int(priority), 0), MAX_PRIORITY)
    return priority


def _envelope_args(env: Envelope) -> tuple[str, bytes]:
    """The header and body enqueue.lua reads (see its comment for the format)."""
    priority = _priority(env)
    eta = "" if env.eta is None else _ms(env.eta)
    key = env.idempotency_key
    if key is None:
        header = f"{env.id}\n{env.queue}\n{priority}\n{eta}\n\n"  # no key: no ttl
    else:
        ttl = env.idempotency_ttl if env.idempotency_ttl is not None else DEFAULT_IDEMPOTENCY_TTL
        header = f"{env.id}\n{env.queue}\n{priority}\n{eta}\n{key}\n{max(1, _ms(ttl))}"
    if header.count("\n") != 5:  # one count for the three free-text fields
        _refuse_newline(env)
    return header, env.body


def _refuse_newline(env: Envelope) -> None:
    for what, text in (("id", env.id), ("queue", env.queue), ("key", env.idempotency_key)):
        if text is not None and "\n" in text:
            raise ValueError(f"message {what} {text!r} contains a newline")


def _unpack_dead(queue: str, message_id: str, packed: bytes) -> DeadLetter:
    """Read ``failed_ms:priority:reason_length:`` + reason + body (see dead_letter.lua)."""
    failed_ms, _priority, length, rest = packed.split(b":", 3)
    size = int(length)
    return DeadLetter(
        id=message_id,
        queue=queue,
        body=rest[size:],
        reason=rest[:size].decode("utf-8", "replace"),
        failed_at=int(failed_ms) / 1000,
    )
