"""RabbitMQ (AMQP 0-9-1) broker on pika: docs/decisions/0016-rabbitmq-broker.md.

A lease is the channel holding an unacknowledged delivery: RabbitMQ hands
the message out again when the connection drops (the worker died), and this
object hands it back (``basic.nack`` with requeue) when a lease runs out
unrenewed.  A delivery held longer than its lease also holds a lease in the
side store, which outlives its channel (a blip, ``consumer_timeout``): a copy
RabbitMQ hands out meanwhile is parked, not run (:mod:`conveyor._amqp_guard`).
Each process consumes on one connection and publishes on another
(:mod:`conveyor._amqp_link`), so that RabbitMQ blocking publishers under an
alarm never stalls acknowledgements (docs/decisions/0022-rabbitmq-reconnection.md).
Every publish waits for the publisher confirm.  Idempotency keys,
revocations and beat leases live in the store named by ``state_url`` (a
sqlite or redis Conveyor broker), because RabbitMQ cannot look a key up;
revocations are also appended to a stream, from which each consuming
process keeps its own copy, so that a lease is checked without a round trip
(:mod:`conveyor._amqp_revocations`).

Delivery counts: a republished message (requeue, delay) carries the count so
far in ``x-conveyor-deliveries``; RabbitMQ's own redeliveries add
``x-delivery-count`` (quorum queues: exact) or the ``redelivered`` flag
(classic queues: at most one more, so a lower bound).  A delivery a dead prefork
child held unstarted is taken off again: its supervisor records it in the side
store, and a redelivered copy waits ``redelivery_wait`` for such verdicts
before it runs (docs/decisions/0031-rabbitmq-redeliveries-wait-for-the-supervisor.md).

A worker's consuming connection asks for a heartbeat of half the lease, so
that RabbitMQ hands a paused worker's messages on within about a lease; the
prefork supervisor holds its children's running records meanwhile
(docs/decisions/0034-rabbitmq-heartbeat-from-the-lease.md).

The queue layout is drawn in :mod:`conveyor._amqp`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from conveyor import _amqp, _amqp_guard, _amqp_revocations, _pid
from conveyor._amqp_confirms import Confirms
from conveyor._amqp_guard import Guards, Verdict
from conveyor._amqp_link import Link, refusal
from conveyor._amqp_revocations import Feed
from conveyor.brokers.base import MAX_PRIORITY, Broker, DeadLetter, Delivery, Envelope, QueueStats
from conveyor.exceptions import BrokerError, BrokerUnavailable

T = TypeVar("T")
_BATCH = 500  # publishes on the wire before waiting for their confirms
_DELIVERIES = "x-conveyor-deliveries"
_ETA = "x-conveyor-eta"
_PARKED = "x-conveyor-parked"  # a redelivered copy waiting for its running holder
# Uncounted-delivery records (``_amqp_guard.uncount``) already taken off the count
# in x-conveyor-deliveries: a redelivery subtracts only the records beyond it.
_FOLDED = "x-conveyor-uncounted"
_REASON = "x-conveyor-reason"
_FAILED_AT = "x-conveyor-failed-at"
_IDEMPOTENCY = "conveyor.idempotency:"
_WAIT_SLICE = 0.01  # seconds reserve waits for pushes with the lock held
_PUSH_GRACE = 0.05
_POLL_EVERY = 0.1  # seconds: extend reads the socket (heartbeats, a dropped link) this often
# Seconds an ``ack_soon`` waits at most for others to go with it (the prefork
# supervisor's AckBuffer waits as long): docs/decisions/0035-rabbitmq-acks-sent-together.md.
_ACK_DELAY = 0.005
_Pushed = tuple[Any, pika.BasicProperties, bytes]  # (method, properties, body)


def _token_prefix() -> str:
    """This process's lease-token prefix, ``"<pid>-"`` (the pid kept by
    :mod:`conveyor._pid`, not a system call per delivery)."""
    return f"{_pid.current()}-"


class _QuietProbe(logging.Filter):
    """pika warns of every channel the broker closes; the probe's expected miss on a
    queue never declared before (``conveyor.dead.*``) is not worth a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("NOT_FOUND" in message and f"'{_amqp.DEAD_QUEUE_PREFIX}" in message)


logging.getLogger("pika.channel").addFilter(_QuietProbe())


_log = logging.getLogger("conveyor.brokers.amqp")


@dataclass
class _Lease:
    queue: str
    tag: int
    generation: int
    since: float  # monotonic: when it was leased
    deadline: float
    delivery: Delivery
    properties: pika.BasicProperties
    folded: int  # uncounted deliveries taken off ``delivery.deliveries`` (``_FOLDED``)


@dataclass(frozen=True)
class _Waiting:
    """A copy RabbitMQ handed out again, held unacknowledged on this channel until
    ``due`` (``redelivery_wait``), then checked again: a dead holder's supervisor
    has had time to settle it or record it as never started.  Held here, not
    republished, so it keeps its place: it runs next, as RabbitMQ meant."""

    queue: str
    due: float  # monotonic
    pushed: _Pushed


@dataclass(frozen=True)
class _Reroute:
    """A received message to publish again (through the delay ladder) before its
    delivery is acknowledged: an eta beyond the ladder's top, or a parked copy."""

    queue: str
    tag: int
    generation: int
    props: pika.BasicProperties
    body: bytes
    eta: float
    deliveries: int
    parked: bool
    folded: int


def _probe(link: Link, declare: Callable[[BlockingChannel], object]
           ) -> pika.exceptions.ChannelClosedByBroker | None:
    """Run ``declare`` on a channel of its own, so that RabbitMQ's refusal closes that
    channel only, never the link's: the refusal, or None."""
    link.chan()
    assert link.conn is not None
    probe = link.conn.channel()
    try:
        declare(probe)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc
    with contextlib.suppress(Exception):
        probe.close()
    return None


class AMQPBroker(Broker):
    """A consuming link and a publishing link (``_amqp_link``), each under its lock;
    the consuming lock is never held while waiting on the publishing link."""

    leases_follow_connection = True  # a delivery tag is its channel's alone

    def __init__(self, url: str, **options: Any) -> None:
        from conveyor.brokers import broker_from_url

        self.url = url
        self._opts = _amqp.parse_amqp_url(url, options)
        self._state = broker_from_url(self._opts.state_url)
        self._guards = Guards(self._state)
        self._consumer = Link(self._opts, on_drop=self._forget_leases)
        self._publisher = Link(self._opts, on_drop=self._declared_clear)
        self._declared: set[str] = set()
        self._warned: set[str] = set()  # queues told they ignore priorities
        self._leases: dict[str, _Lease] = {}
        # Deliveries RabbitMQ pushed to this connection's consumers, not yet leased.
        self._pushed: dict[str, collections.deque[_Pushed]] = {}
        self._waiting: list[_Waiting] = []  # copies handed out again, not yet checked twice
        self._consumers: dict[str, str] = {}  # queue -> consumer tag on this connection
        self._prefetch: dict[str, int] = {}  # queue -> its consumer's prefetch count
        self._feed = Feed(self._opts.revocations_kept)
        self._stream_on = -1  # the publishing link's generation the stream was checked on
        self._stream_refused: str | None = None
        self._read_at = 0.0  # monotonic: the consuming link's socket was last read
        # Delivery tags ``ack_soon`` holds back on this connection, and since when
        # (monotonic); sent by the next reserve, or a renewal, or ``_send_later``.
        self._later: list[int] = []
        self._later_since = 0.0
        self._sender_pid = 0  # the process whose ``_send_later`` thread runs
        self._sender_wake = threading.Event()
        self._closed = False

    # -- connections -------------------------------------------------------------
    def _forget_leases(self) -> None:
        """The consuming connection broke: its leases went back to RabbitMQ with it
        (a guarded delivery keeps its side-store lease: ``_amqp_guard``)."""
        self._declared.clear()
        self._leases.clear()
        self._pushed.clear()
        self._waiting.clear()
        self._consumers.clear()
        self._later.clear()  # RabbitMQ hands those out again: they may run once more
        self._feed.forget_connection()

    def _declared_clear(self) -> None:
        self._declared.clear()

    def _settle(self, op: Callable[[BlockingChannel], T], lost: T) -> T:
        """Run an ack-like ``op`` once on the consuming link: if the connection is gone,
        so are its leases (RabbitMQ hands the messages out again), and ``lost`` says so."""
        try:
            return self._consumer.run(op, attempts=1)
        except BrokerUnavailable:
            return lost

    def _declare(self, link: Link, queue: str, used: bool = True) -> None:
        """Declare ``queue``'s topology once per connection; the dead-letter queue is
        declared last, so finding it means an earlier process declared the rest.  A
        queue this process sends to or consumes from (``used``) has its arguments
        checked too (:meth:`_same_arguments`); one it only counts (``stats``) may
        belong to an app configured otherwise, and is left as it is."""
        if queue in self._declared:
            return
        args = _amqp.work_queue_arguments(self._opts, queue)
        if self._exists(link, _amqp.dead_name(queue)):
            if used:
                self._same_arguments(link, queue, args)
                self._declared.add(queue)
            return
        ch = link.chan()
        self._declare_ladder(ch, queue)
        ch.queue_declare(queue, durable=True, arguments=args)
        ch.queue_bind(queue, _amqp.due_name(queue))
        ch.exchange_declare(_amqp.DEAD_EXCHANGE, "direct", durable=True)
        dead = _amqp.dead_name(queue)
        ch.queue_declare(dead, durable=True, arguments={"x-queue-type": "classic"})
        ch.queue_bind(dead, _amqp.DEAD_EXCHANGE, routing_key=queue)
        ch.queue_declare(_amqp.REGISTRY, durable=True, arguments={"x-queue-type": "classic"})
        self._publisher.run(lambda pub: _confirmed(
            pub, "", _amqp.REGISTRY, queue.encode(), pika.BasicProperties(delivery_mode=2)))
        self._declared.add(queue)

    @staticmethod
    def _exists(link: Link, queue: str) -> bool:
        """Passive check (a miss closes the probe's channel only)."""
        return _probe(link, lambda ch: ch.queue_declare(queue, passive=True)) is None

    def _same_arguments(self, link: Link, queue: str, args: dict[str, Any]) -> None:
        """Declare the existing ``queue`` with this process's arguments, on a channel
        of its own: RabbitMQ refuses one declared with others (``x-max-priority``,
        ``x-queue-type``; ADR 0041), and a refusal must close neither the channel nor
        the connection that holds this process's deliveries (RabbitMQ would hand
        them out again, and tasks that ran would run twice)."""
        refused = _probe(link, lambda ch: ch.queue_declare(queue, durable=True, arguments=args))
        if refused is not None:
            raise refusal(self._opts, refused)

    def _declare_ladder(self, blocking: BlockingChannel, queue: str) -> None:
        """Sixty declarations sent without waiting for each answer (``nowait``, which
        pika's channel does when given no callback): one round trip instead of sixty.
        A refusal closes the channel, which the next synchronous call reports."""
        ch = blocking._impl
        due = _amqp.due_name(queue)
        ch.exchange_declare(due, "fanout", durable=True)
        below = due
        for level in range(_amqp.LEVELS):
            name = _amqp.delay_name(queue, level)
            ch.exchange_declare(name, "topic", durable=True)
            ch.queue_declare(name, durable=True, arguments={
                "x-queue-type": "classic", "x-dead-letter-exchange": below,
                "x-message-ttl": round(_amqp.TICK * 1000) * 2**level})
            ch.queue_bind(name, name, routing_key=_amqp.level_pattern(level, "1"))
            ch.exchange_bind(below, name, routing_key=_amqp.level_pattern(level, "0"))
            below = name

    # -- producing ---------------------------------------------------------------
    def enqueue(self, envelope: Envelope) -> str:
        return self.enqueue_many([envelope])[0]

    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Publish the new envelopes ``_BATCH`` at a time, each batch on the wire
        before one wait for all its confirms (``Confirms``).  After a reconnect only
        the unconfirmed rest is sent again; on failure the idempotency keys of what
        was not confirmed are given back, so that a retry of the call sends them."""
        ids = [self._claim_key(e) for e in envelopes]
        fresh = [e for e, owner in zip(envelopes, ids, strict=True) if owner == e.id]
        confirmed = 0

        def op(ch: BlockingChannel) -> None:
            nonlocal confirmed
            while confirmed < len(fresh):
                batch = fresh[confirmed:confirmed + _BATCH]
                for e in batch:
                    self._send(ch, e.queue, e.id, e.body, e.priority, e.eta, 0)
                Confirms.of(ch).wait()
                confirmed += len(batch)
        try:
            self._publisher.run(op)
        except Exception:
            self._release_keys(fresh[confirmed:])
            raise
        return ids

    def _claim_key(self, envelope: Envelope) -> str:
        """The id owning ``envelope``'s idempotency key (its own when it is new)."""
        if envelope.idempotency_key is None:
            return envelope.id
        name = _IDEMPOTENCY + envelope.idempotency_key
        ttl = envelope.idempotency_ttl or 86400.0
        for _ in range(10):
            if self._state.acquire_lease(name, envelope.id, ttl):
                return envelope.id
            holder = self._state.lease_holder(name)
            if holder is not None:
                return holder
        raise BrokerUnavailable("idempotency key store kept changing under the claim")

    def _release_keys(self, envelopes: Sequence[Envelope]) -> None:
        for e in envelopes:
            if e.idempotency_key is not None:
                with contextlib.suppress(Exception):
                    self._state.release_lease(_IDEMPOTENCY + e.idempotency_key, e.id)

    def _publish(self, queue: str, msg_id: str, body: bytes, priority: int,
                 eta: float | None, deliveries: int, parked: bool = False,
                 folded: int = 0) -> None:
        """Publish on the publishing link and wait for the confirm (pika's errors on a
        nack or a return; an alarm blocks it up to ``blocked_connection_timeout``)."""
        def op(ch: BlockingChannel) -> None:
            self._send(ch, queue, msg_id, body, priority, eta, deliveries, parked, folded)
            Confirms.of(ch).wait()
        self._publisher.run(op)

    def _send(self, ch: BlockingChannel, queue: str, msg_id: str, body: bytes,
              priority: int, eta: float | None, deliveries: int, parked: bool = False,
              folded: int = 0) -> None:
        """Publish on the publishing link's channel ``ch`` without waiting: the
        caller waits for the confirms."""
        headers: dict[str, Any] = {_DELIVERIES: deliveries}
        if parked:
            headers[_PARKED] = 1
        if folded:
            headers[_FOLDED] = folded
        exchange, key = "", queue
        wait = (eta - time.time()) if eta is not None else 0.0
        if eta is not None and wait > _amqp.TICK / 2:
            headers[_ETA] = int(eta * 1000)  # AMQP tables carry no floats in pika
            exchange = _amqp.delay_name(queue, _amqp.LEVELS - 1)
            key = _amqp.delay_routing_key(_amqp.delay_ticks(wait))
        if priority and queue not in self._warned and not _amqp.ordered(self._opts, queue):
            self._warned.add(queue)
            _log.warning("queue %s has no priorities: priority %d is kept in the message "
                         "but served first in, first out; %s", queue, priority,
                         _amqp.unordered_reason(self._opts))
        props = pika.BasicProperties(message_id=msg_id, delivery_mode=2, headers=headers,
                                     priority=MAX_PRIORITY - priority)

        self._declare(self._publisher, queue)
        Confirms.of(ch).publish(exchange, key, body, props)

    # -- consuming ---------------------------------------------------------------
    def reserve(self, queues: Sequence[str], count: int, lease: float,
                timeout: float) -> list[Delivery]:
        """Take from what the consumers were pushed, topped up by ``basic.get`` (so
        a message already queued is never missed), then wait for pushes in short
        slices, letting other threads ack and extend in between."""
        self._tie_heartbeat(lease)
        got = self._reserve_once(queues, count, lease, poll=True)
        # A message given back a moment ago may be on its way to a consumer, where
        # basic.get cannot see it: even timeout=0 waits one grace for pushes.
        deadline = time.monotonic() + max(timeout, _PUSH_GRACE)
        while not got and time.monotonic() < deadline:
            got = self._reserve_once(queues, count, lease, poll=False)
        return got

    def _tie_heartbeat(self, lease: float) -> None:
        """Ask for a heartbeat of half the lease on the consuming connection, unless
        the options set one (docs/decisions/0034-rabbitmq-heartbeat-from-the-lease.md).

        RabbitMQ alone decides when another consumer gets what this one holds;
        with the server's heartbeat (60 s) a paused worker kept its messages for
        two to three minutes.  The lease is known at the first reserve: a
        consuming connection opened before (a renewal of nothing, ``stats``)
        holds no delivery yet, and is reopened with it."""
        if self._consumer.heartbeat is not None or self._opts.heartbeat is not None:
            return
        with self._consumer.lock:
            self._consumer.heartbeat = _amqp.lease_heartbeat(lease)
            if self._consumer.conn is not None:
                self._consumer.drop()

    def _reserve_once(self, queues: Sequence[str], count: int, lease: float,
                      poll: bool) -> list[Delivery]:
        reroutes: list[_Reroute] = []
        got = self._consumer.run(lambda ch: self._take(ch, queues, count, lease, poll,
                                                       reroutes))
        for reroute in reroutes:  # outside the consuming lock: an alarm may block these
            self._reroute(reroute)
        if self._feed.marker_due():
            self._append_marker()
        return got

    def _append_marker(self) -> None:
        """Append a marker for the revocation feed (until the feed is complete, leases
        carry no revocation flag and the worker asks the side store)."""
        try:
            self._publisher.run(lambda ch: _confirmed(
                ch, "", _amqp_revocations.STREAM, b"", _amqp_revocations.marker()),
                attempts=1)
        except BrokerUnavailable:
            return  # tried again at the next reserve
        self._feed.marked()

    def _take(self, ch: BlockingChannel, queues: Sequence[str], count: int,
              lease: float, poll: bool, reroutes: list[_Reroute]) -> list[Delivery]:
        # The acks held back go first, in one frame, with this call's read: RabbitMQ
        # pushes their replacements as soon as it has them.
        acked = bool(self._later)
        self._ack_tags(ch, [], flush=False)
        self._expire(ch)
        self._stop_consuming(ch, queues)
        fresh = {q for q in queues if q not in self._pushed}
        for queue in queues:
            self._declare(self._consumer, queue)
            self._consume(ch, queue, count)
        self._feed.subscribe(ch.connection, self._consumer.generation)
        # Acks that made room in the consumers' windows: RabbitMQ pushes what is
        # queued into that room, so this read waits for those pushes (it returns
        # with the first) instead of asking with basic.get, a round trip as long
        # and dearer for both sides (docs/performance.md, round two, fifth pass).
        replacing = poll and acked and not fresh
        ch.connection.process_data_events(_WAIT_SLICE if replacing or not poll else 0)
        self._read_at = time.monotonic()
        out: list[Delivery] = []
        for queue in queues:
            before = len(out)
            self._from_pushed(ch, queue, count, lease, out, reroutes)
            pushed = len(out) > before or replacing
            # Copies held back to wait count against the batch: basic.get ignores the
            # prefetch, and a child that topped up past them took every redelivered
            # message of a dead worker, to run one by one while its siblings idled.
            while (poll and len(out) + self._held_back(queue) < count
                   and self._top_up(queue, queue in fresh, count, pushed)):
                more = self._get_one(ch, queue)
                self._from_pushed(ch, queue, count, lease, out, reroutes)
                if not more:
                    break
        return out

    def _held_back(self, queue: str) -> int:
        """Copies of ``queue``'s messages held here until their ``redelivery_wait`` ends."""
        return sum(1 for waited in self._waiting if waited.queue == queue)

    def _top_up(self, queue: str, fresh: bool, count: int, pushed: bool) -> bool:
        """Whether ``basic.get`` should add to what the consumer was pushed.

        Yes for a consumer started by this call (nothing pushed yet), for a batch
        still empty, and for a count beyond the consumer's prefetch (RabbitMQ will
        not push that many).  Not when pushes already supplied part of a batch the
        prefetch covers: the rest is on its way, and a get is a round trip (a Raft
        command on quorum queues) that a busy worker would pay on nearly every
        reserve."""
        return fresh or not pushed or count > self._prefetch.get(queue, 0)

    def _from_pushed(self, ch: BlockingChannel, queue: str, count: int, lease: float,
                     out: list[Delivery], reroutes: list[_Reroute]) -> None:
        """Lease what was pushed to ``queue``'s consumer, copies that waited first."""
        now = time.monotonic()
        for waited in [w for w in self._waiting if w.queue == queue and w.due <= now]:
            if len(out) >= count:
                return
            self._waiting.remove(waited)
            self._keep(self._leased(ch, queue, *waited.pushed, lease, waited=True),
                       out, reroutes)
        pushed = self._pushed.get(queue)
        while pushed and len(out) < count:
            self._keep(self._leased(ch, queue, *pushed.popleft(), lease), out, reroutes)

    @staticmethod
    def _keep(got: Delivery | _Reroute | None, out: list[Delivery],
              reroutes: list[_Reroute]) -> None:
        if isinstance(got, Delivery):
            out.append(got)
        elif isinstance(got, _Reroute):
            reroutes.append(got)

    def _get_one(self, ch: BlockingChannel, queue: str) -> bool:
        """``basic.get`` one message into the pushed buffer (``False``: none ready).

        It sees what is queued but not yet pushed; one at a time, because a get
        is a Raft command on quorum queues and pushes usually arrive meanwhile.
        Deliveries RabbitMQ pushed before answering (even an empty answer: the
        rest may all be on their way here) precede the answer on the wire, so
        they are buffered first: nothing is missed and first in, first out holds."""
        method, props, body = ch.basic_get(queue, auto_ack=False)
        ch.connection.process_data_events(0)
        if method is None:
            return False
        self._pushed[queue].append((method, props, body))
        return True

    def _consume(self, ch: BlockingChannel, queue: str, count: int) -> None:
        """Start a consumer on ``queue`` whose prefetch is this first ``count``:
        RabbitMQ pushes up to that many unacked messages (leased or waiting here)."""
        if queue in self._pushed:
            return
        buffer: collections.deque[_Pushed] = collections.deque()
        self._pushed[queue] = buffer
        ch.basic_qos(prefetch_count=max(1, count))
        self._prefetch[queue] = max(1, count)
        self._consumers[queue] = ch.basic_consume(
            queue, lambda _c, method, props, body: buffer.append((method, props, body)),
            auto_ack=False)

    def _stop_consuming(self, ch: BlockingChannel, queues: Sequence[str]) -> None:
        """Cancel the consumer of a queue the worker no longer reserves from (remote
        control's ``cancel_consumer``) and hand back what RabbitMQ pushed to it, which
        would otherwise wait here unacked, invisible to every other worker.  pika
        itself rejects pushes that arrive while the cancel is under way."""
        for queue in [q for q in self._pushed if q not in queues]:
            tag = self._consumers.pop(queue, None)
            if tag is not None:
                ch.basic_cancel(tag)
            for method, _props, _body in self._pushed.pop(queue):
                ch.basic_nack(method.delivery_tag, requeue=True)
            for waited in [w for w in self._waiting if w.queue == queue]:
                self._waiting.remove(waited)
                ch.basic_nack(waited.pushed[0].delivery_tag, requeue=True)

    def _leased(self, ch: BlockingChannel, queue: str, method: Any,
                props: pika.BasicProperties, body: bytes, lease: float,
                waited: bool = False) -> Delivery | _Reroute | None:
        """Lease a received message, or say it must be published again first, or
        drop it or hold it back (``None``: settled elsewhere, or ``_waiting``)."""
        headers = props.headers or {}
        base = int(headers.get(_DELIVERIES, 0))
        folded = int(headers.get(_FOLDED, 0))
        eta = headers.get(_ETA)
        if eta is not None and int(eta) / 1000 - time.time() > 1.0:  # beyond the ladder's top
            return _Reroute(queue, method.delivery_tag, self._consumer.generation, props, body,
                            int(eta) / 1000, base, parked=False, folded=folded)
        redelivered = int(headers.get("x-delivery-count", 1 if method.redelivered else 0))
        message_id = str(props.message_id)
        token = _token_prefix() + uuid.uuid4().hex
        uncounted = 0
        if redelivered or headers.get(_PARKED):
            verdict = self._guards.arrival(message_id, token, lease,
                                           waited=waited or bool(headers.get(_PARKED)))
            if verdict is Verdict.DROP:
                ch.basic_ack(method.delivery_tag)
                _log.info("dropped a copy of %s handed out again: it was settled elsewhere",
                          message_id)
                return None
            if verdict is Verdict.WAIT:
                self._waiting.append(_Waiting(
                    queue, time.monotonic() + min(self._opts.redelivery_wait, lease / 4),
                    (method, props, body)))
                return None
            if verdict is Verdict.PARK:  # its holder still runs it
                return _Reroute(queue, method.delivery_tag, self._consumer.generation, props,
                                body, time.time() + lease / 2, base + redelivered, parked=True,
                                folded=folded)
            uncounted = max(0, self._guards.uncounted(message_id) - folded)
        delivery = Delivery(id=message_id, queue=queue, body=body,
                            deliveries=max(1, base + redelivered + 1 - uncounted), token=token,
                            priority=max(0, MAX_PRIORITY - (props.priority or 0)),
                            # retries are <task id>~<n>; revocations name the task id
                            revoked=self._feed.flag(message_id.split("~", 1)[0]))
        now = time.monotonic()
        self._leases[token] = _Lease(queue, method.delivery_tag, self._consumer.generation,
                                     now, now + lease, delivery, props, folded + uncounted)
        return delivery

    def _reroute(self, r: _Reroute) -> None:
        """Publish ``r`` again, then acknowledge its delivery.  If the publish fails
        (an alarm), the delivery goes back at once to come round again; if the
        acknowledgement fails, the copy and the redelivery are both checked on arrival."""
        try:
            self._publish(r.queue, str(r.props.message_id), r.body,
                          MAX_PRIORITY - (r.props.priority or 0), r.eta, r.deliveries,
                          parked=r.parked, folded=r.folded)
        except BrokerUnavailable as exc:
            _log.warning("could not re-publish %s (%s); handing it back",
                         r.props.message_id, exc)
            self._settle_tag(r.generation, r.tag, ack=False)
            return
        self._settle_tag(r.generation, r.tag, ack=True)

    def _settle_tag(self, generation: int, tag: int, ack: bool) -> None:
        def op(ch: BlockingChannel) -> None:
            if generation == self._consumer.generation:
                if ack:
                    ch.basic_ack(tag)
                else:
                    ch.basic_nack(tag, requeue=True)
        self._settle(op, None)

    def _expire(self, ch: BlockingChannel, keep: Collection[str] = ()) -> None:
        """Hand back deliveries whose lease ran out unrenewed, except those in ``keep``.

        The deliveries a call acknowledges or renews are kept however late: while
        the channel holds a delivery RabbitMQ hands it to no one else, so a holder
        that was only slow (a prefork child holding the GIL in C past its lease,
        its renewing thread starved) still holds it.  Handing it back then would
        run it twice.  A holder that forgot its message is another matter: that
        one is handed back by the next call about anything else (a reserve)."""
        now = time.monotonic()
        for token, held in list(self._leases.items()):
            if held.deadline <= now and token not in keep:
                del self._leases[token]
                ch.basic_nack(held.tag, requeue=True)

    def _held(self, ch: BlockingChannel, delivery: Delivery,
              keep: Collection[str] = ()) -> _Lease | None:
        """``delivery``'s lease if this connection holds it; ``keep``: the tokens of the
        deliveries the same call settles or renews (see ``_expire``)."""
        self._expire(ch, keep or (delivery.token,))
        held = self._leases.get(delivery.token)
        return held if held is not None and held.generation == self._consumer.generation \
            else None

    def _take_lease(self, delivery: Delivery) -> _Lease | None:
        """Remove ``delivery``'s lease if this connection still holds it (the caller
        settles it); ``None`` if it went with a connection or ran out."""
        def op(ch: BlockingChannel) -> _Lease | None:
            held = self._held(ch, delivery)
            if held is not None:
                del self._leases[delivery.token]
            return held
        return self._settle(op, None)

    def _ack_tag(self, held: _Lease) -> bool:
        def op(ch: BlockingChannel) -> bool:
            if held.generation != self._consumer.generation:
                return False  # the connection went meanwhile: RabbitMQ hands it out again
            ch.basic_ack(held.tag)
            return True
        return self._settle(op, False)

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        return self._ack(deliveries, soon=False)

    def ack_soon(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Acknowledge with others within ``_ACK_DELAY``: the lease is checked and
        given up now (``False`` where it was not held), the tag goes with the next
        reserve (one ``multiple`` frame for a batch's tasks, and their replacements
        read together) or a renewal, or by ``_send_later`` when a long task began
        meanwhile (docs/decisions/0035-rabbitmq-acks-sent-together.md).  A tag
        still held back when the connection breaks or the process dies is handed
        out again by RabbitMQ: a task finished in the last milliseconds runs once
        more (its result fenced by attempt), never one unfinished."""
        acked = self._ack(deliveries, soon=True)
        if self._later:
            self._wake_sender()
        return acked

    def flush_acks(self) -> None:
        """Send the acks ``ack_soon`` holds back, now (a consumer that stops)."""
        channel = self._consumer.channel
        if self._later and channel is not None and channel.is_open:  # else they went with it
            self._settle(self._send_held, None)

    def _send_held(self, ch: BlockingChannel) -> None:
        self._ack_tags(ch, [])
        self._read_at = time.monotonic()

    def _wake_sender(self) -> None:
        """Start this process's ``_send_later`` thread, or wake it."""
        if self._sender_pid != _pid.current():  # none yet here (or a forked copy)
            self._sender_pid = _pid.current()
            self._sender_wake = threading.Event()
            threading.Thread(target=self._send_later, args=(self._sender_wake,),
                             name="conveyor-amqp-acks", daemon=True).start()
        self._sender_wake.set()

    def _send_later(self, wake: threading.Event) -> None:
        """Send held-back acks once the oldest has waited ``_ACK_DELAY``, when no call
        on the consuming link did first (a task longer than that began after them)."""
        while not self._closed:
            wake.wait()
            wake.clear()
            while self._later and not self._closed:
                wait = self._later_since + _ACK_DELAY - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                    continue
                try:
                    self.flush_acks()
                except BrokerError as exc:  # the connection's drop forgot them: redelivered
                    _log.warning("could not send held-back acknowledgements: %s", exc)

    def _ack(self, deliveries: Sequence[Delivery], soon: bool) -> list[bool]:
        mine = [d for d in deliveries if self._mine(d)]
        for d in deliveries:
            if not self._mine(d):
                self._settle_elsewhere(d)
        # A guarded message is marked settled first: a copy RabbitMQ hands out again
        # (its channel may be gone already) is then dropped.
        settled = {d.token for d in mine
                   if self._guards.holds(d.token) and self._guards.settle(d)}

        tokens = {d.token for d in mine}

        def op(ch: BlockingChannel) -> set[str]:
            acked: set[str] = set()
            tags: list[int] = []
            for d in mine:
                held = self._held(ch, d, tokens)
                if held is not None:
                    del self._leases[d.token]
                    acked.add(d.token)
                    tags.append(held.tag)
            if soon:
                if tags and not self._later:
                    self._later_since = time.monotonic()
                self._later.extend(tags)
                return acked
            self._ack_tags(ch, tags)
            self._read_at = time.monotonic()  # the flush read the socket too
            return acked
        acked = self._settle(op, set[str]()) if mine else set[str]()
        # A channel gone while the task ran (a heartbeat missed, a blip): the copy
        # RabbitMQ handed out is parked while the running record is in this
        # delivery's name, and settling drops it; else another delivery took over.
        settled.update(d.token for d in mine if d.token not in acked | settled
                       and self._guards.settle_lost(d))
        return [not self._mine(d) or d.token in acked or d.token in settled
                for d in deliveries]

    def _ack_tags(self, ch: BlockingChannel, tags: list[int], flush: bool = True) -> None:
        """Acknowledge ``tags`` and those ``ack_soon`` held back in one write: one
        ``multiple`` frame when no other delivery this channel holds has a lower tag
        (tags rise in the order RabbitMQ sends, so a delivery still on its way has a
        higher one), else one frame each.  ``flush=False``: the caller's read sends it."""
        if self._later:
            tags, self._later = self._later + tags, []
        if not tags:
            return
        top = max(tags)
        others = [held.tag for held in self._leases.values()] + [
            method.delivery_tag for pushed in self._pushed.values() for method, _, _ in pushed] + [
            waited.pushed[0].delivery_tag for waited in self._waiting]
        if len(tags) > 1 and all(tag > top for tag in others):
            ch._impl.basic_ack(top, multiple=True)
        else:
            for tag in tags:
                ch._impl.basic_ack(tag)
        if flush:
            ch._flush_output()

    @staticmethod
    def _mine(delivery: Delivery) -> bool:
        """Whether this process reserved ``delivery`` (its token starts with our pid)."""
        return delivery.token.startswith(_token_prefix())

    def _settle_elsewhere(self, delivery: Delivery) -> None:
        """Settle a delivery another process's channel holds (a prefork supervisor
        settling a child it killed): RabbitMQ hands the message out again when that
        channel closes, and whoever receives it then drops it (``_leased``).  A
        redelivery that beats this write runs once more; it cannot loop.  The
        running record held in the child's name (``extend``) is given up after."""
        _amqp_guard.mark(self._state, delivery.id)
        self._guards.release(delivery)

    def _uncount_elsewhere(self, delivery: Delivery) -> None:
        """Record that another process's delivery of ``delivery`` does not count (a dead
        child held it unstarted); its redelivered copy, waiting ``redelivery_wait``,
        subtracts it.  Without the side store it counts (logged): a lower limit."""
        try:
            _amqp_guard.uncount(self._state, delivery.id)
        except BrokerError as exc:
            _log.warning("cannot record %s as not started in the side store (%s): its "
                         "redelivery counts towards max_deliveries", delivery.id, exc)

    def requeue(self, delivery: Delivery, delay: float = 0.0, count: bool = False) -> bool:
        if not self._mine(delivery):
            # A prefork supervisor handing back what a dead child held: RabbitMQ hands
            # it out again by itself, counted; an unstarted one must not count.
            if not count:
                self._uncount_elsewhere(delivery)
            self._guards.release(delivery)  # the copy, waiting, may run now
            return False
        held = self._take_lease(delivery)
        if held is None:  # its connection went: RabbitMQ (or a parked copy) has it
            self._guards.release(delivery)
            return False
        eta = time.time() + delay if delay > 0 else None
        seen = delivery.deliveries if count else delivery.deliveries - 1
        try:
            self._publish(held.queue, delivery.id, delivery.body, delivery.priority, eta, seen,
                          folded=held.folded)
        except BrokerUnavailable:
            self._settle_tag(held.generation, held.tag, ack=False)  # back at once instead
            self._guards.release(delivery)
            return False
        done = self._ack_tag(held)
        self._guards.release(delivery)
        return done

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        foreign = not self._mine(delivery)
        if foreign:
            self._settle_elsewhere(delivery)
            return self._dead_letter_published(delivery.queue, delivery, reason)
        guarded = self._guards.holds(delivery.token)
        held = self._take_lease(delivery)
        if held is None and not guarded:
            return False
        if not self._dead_letter_published(held.queue if held else delivery.queue,
                                           delivery, reason):
            if held is not None:
                self._settle_tag(held.generation, held.tag, ack=False)
            return False
        settled = guarded and self._guards.settle(delivery)
        return (held is not None and self._ack_tag(held)) or settled

    def _dead_letter_published(self, queue: str, delivery: Delivery, reason: str) -> bool:
        try:
            self._publish_dead(queue, delivery, reason)
        except BrokerUnavailable as exc:
            _log.warning("could not dead-letter %s: %s", delivery.id, exc)
            return False
        return True

    def _publish_dead(self, queue: str, delivery: Delivery, reason: str) -> None:
        """The message into ``queue``'s dead letters, replacing an older copy."""
        self._sweep_dead(queue, {delivery.id}, replay=False)
        headers = {_REASON: reason, _FAILED_AT: int(time.time() * 1000)}
        props = pika.BasicProperties(message_id=delivery.id, delivery_mode=2, headers=headers)
        self._publisher.run(lambda ch: _confirmed(
            ch, _amqp.DEAD_EXCHANGE, queue, delivery.body, props))

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        """Renew leases; a delivery held longer than its lease also renews (takes) its
        side-store lease, which outlives the channel (``_amqp_guard``).

        Another process's delivery (a prefork supervisor renewing for its
        children's running tasks) cannot be renewed on its channel: its running
        record is held in its name instead (``Guards.stand_in``), so that a child
        whose connection RabbitMQ closed while it held the GIL keeps its task."""
        if all(self._mine(d) for d in deliveries):
            return self._extend_own(deliveries, lease)
        mine = [d for d in deliveries if self._mine(d)]  # none in a supervisor:
        own = iter(self._extend_own(mine, lease) if mine else [])  # no consuming link
        return [next(own) if self._mine(d) else self._guards.stand_in(d, lease)
                for d in deliveries]

    def _extend_own(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        tokens = {d.token for d in deliveries}

        def op(ch: BlockingChannel) -> tuple[list[bool], list[bool]]:
            out, aged = [], []
            now = time.monotonic()
            for d in deliveries:
                held = self._held(ch, d, tokens)
                if held is not None:
                    held.deadline = now + lease
                out.append(held is not None)
                aged.append(held is not None and now - held.since >= lease)
            if self._later and now - self._later_since >= _ACK_DELAY:
                self._send_held(ch)  # acks held back long enough: before this task starts
            # Answer heartbeats on a busy worker, and see a dropped connection; a
            # reserve or an ack a moment ago read the socket already (the check
            # before each task starts comes right after one).
            if now - self._read_at >= _POLL_EVERY:
                ch.connection.process_data_events(0)
                self._read_at = now
            return out, aged
        # A connection found gone after the loop (a paused process waking) kept
        # nothing: no side-store lease may be taken on its behalf.
        none = [False] * len(deliveries)
        kept, aged = self._settle(op, (none, none))
        # Renewing a guard that is not held (nor old enough to take) costs nothing.
        return [self._guards.renew(d, lease, take=old) or held
                for d, held, old in zip(deliveries, kept, aged, strict=True)]

    # -- inspection and repair -------------------------------------------------------
    def queues(self) -> list[str]:
        """Every queue whose topology a process created in this vhost: one message
        each in ``conveyor.queues``, read and handed back (RabbitMQ lists queues
        only over its HTTP API)."""
        names = set(self._declared)
        with self._side_channel() as ch:
            ch.queue_declare(_amqp.REGISTRY, durable=True,
                             arguments={"x-queue-type": "classic"})
            while True:
                method, _props, body = ch.basic_get(_amqp.REGISTRY, auto_ack=False)
                if method is None:
                    break
                names.add(body.decode())
        return sorted(names)

    def queue_arguments(self, queue: str) -> dict[str, Any]:
        """The arguments this process declares the work queue ``queue`` with, and
        requires of one that exists (``_declare``): a worker consuming ``queue``
        runs only where RabbitMQ holds it so, ``x-max-priority`` included."""
        return _amqp.work_queue_arguments(self._opts, queue)

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        names = list(self.queues() if queues is None else queues)
        return self._consumer.run(lambda ch: [self._stats_of(ch, q) for q in names])

    def _stats_of(self, ch: BlockingChannel, queue: str) -> QueueStats:
        self._declare(self._consumer, queue, used=False)

        def count(name: str) -> int:
            return int(ch.queue_declare(name, passive=True).method.message_count)

        # Copies held back here for redelivery_wait count as delayed, as parked ones do.
        delayed = sum(count(_amqp.delay_name(queue, k))
                      for k in range(_amqp.LEVELS)) + self._held_back(queue)
        inflight = sum(1 for held in self._leases.values() if held.queue == queue)
        ready = count(queue)
        # Deliveries pushed before that answer precede it on the wire: buffer them, or
        # a message on its way here would be counted nowhere.
        ch.connection.process_data_events(0)
        waiting = len(self._pushed.get(queue, ()))
        # RabbitMQ shows a queue's head only by taking it: the oldest age is unknown.
        return QueueStats(queue, ready + waiting, delayed, inflight,
                          count(_amqp.dead_name(queue)), oldest_age=None)

    def purge(self, queue: str) -> int:
        def op(ch: BlockingChannel) -> int:
            self._declare(self._consumer, queue)
            names = [queue] + [_amqp.delay_name(queue, k) for k in range(_amqp.LEVELS)]
            pushed = self._pushed.get(queue, collections.deque())
            pushed.extend(w.pushed for w in self._waiting if w.queue == queue)
            self._waiting = [w for w in self._waiting if w.queue != queue]
            dropped = len(pushed)
            while pushed:
                ch.basic_ack(pushed.popleft()[0].delivery_tag)
            return dropped + sum(int(ch.queue_purge(n).method.message_count) for n in names)
        return self._consumer.run(op)

    def _side_channel(self) -> contextlib.AbstractContextManager[BlockingChannel]:
        """A channel of its own on the publishing link (replays publish): closing it
        returns every letter it did not ack."""
        return self._publisher.side_channel()

    def _letters(self, ch: BlockingChannel, queue: str) -> Iterator[tuple[int, DeadLetter]]:
        self._declare(self._publisher, queue)
        for _ in range(int(ch.queue_declare(_amqp.dead_name(queue), passive=True)
                           .method.message_count)):
            method, props, body = ch.basic_get(_amqp.dead_name(queue), auto_ack=False)
            if method is None:
                return
            headers = props.headers or {}
            reason = headers.get(_REASON)
            if reason is None:  # dead-lettered by RabbitMQ itself (x-death)
                death = (headers.get("x-death") or [{}])[0]
                reason = f"rejected by RabbitMQ: {death.get('reason', 'unknown')}"
            yield method.delivery_tag, DeadLetter(
                str(props.message_id), queue, body,
                reason.decode() if isinstance(reason, bytes) else str(reason),
                int(headers.get(_FAILED_AT, 0)) / 1000)

    def dead_letters(self, queue: str, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        with self._side_channel() as ch:
            letters = [letter for _, letter in self._letters(ch, queue)]
        letters.reverse()
        return letters[offset:offset + limit]

    def _sweep_dead(self, queue: str, ids: set[str] | None, replay: bool) -> int:
        done = 0
        with self._side_channel() as ch:
            for tag, letter in self._letters(ch, queue):
                if ids is None or letter.id in ids:
                    if replay:
                        _amqp_guard.unmark(self._state, [letter.id])
                        self._publish(queue, letter.id, letter.body, 0, None, 0)
                    ch.basic_ack(tag)
                    done += 1
        return done

    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        return self._sweep_dead(queue, None if ids is None else set(ids), replay=True)

    def discard_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        return self._sweep_dead(queue, None if ids is None else set(ids), replay=False)

    # -- control plane: in the state store ---------------------------------------------
    def revoke(self, ids: Sequence[str], ttl: float, terminate: bool = False) -> None:
        """Into the side store (exact, and what a process whose copy is incomplete
        asks), then onto the revocation stream that feeds the workers' copies."""
        if not ids:
            return
        self._state.revoke(ids, ttl, terminate)
        if ttl > self._opts.revocations_kept:
            _log.warning("revoking for %gs, longer than the revocation stream keeps records "
                         "(revocations_kept=%gs): a worker started after that learns of it "
                         "only through revoked()", ttl, self._opts.revocations_kept)
        body, props = _amqp_revocations.record(list(ids), ttl, terminate)

        def op(ch: BlockingChannel) -> None:
            if self._stream_on != self._publisher.generation:
                assert self._publisher.conn is not None
                self._stream_refused = _amqp_revocations.ensure_stream(
                    self._publisher.conn, self._opts.revocations_kept)
                self._stream_on = self._publisher.generation
            if self._stream_refused is None:
                _confirmed(ch, "", _amqp_revocations.STREAM, body, props)
        self._publisher.run(op)

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        return self._state.revoked(ids)

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        return self._state.acquire_lease(name, holder, ttl)

    def release_lease(self, name: str, holder: str) -> None:
        self._state.release_lease(name, holder)

    def lease_holder(self, name: str) -> str | None:
        return self._state.lease_holder(name)

    def take_rate_slot(self, limits: Sequence[tuple[str, float]], within: float) -> float:
        return self._state.take_rate_slot(limits, within)

    def ping(self) -> bool:
        self._publisher.run(lambda ch: ch.connection.process_data_events(0))
        return self._state.ping()

    def close(self) -> None:
        with contextlib.suppress(BrokerError):
            self.flush_acks()
        self._closed = True
        self._sender_wake.set()
        for link in (self._consumer, self._publisher):
            with link.lock:
                link.drop()
        self._state.close()


def _confirmed(ch: BlockingChannel, exchange: str, key: str, body: bytes,
               props: pika.BasicProperties) -> None:
    """One publish on ``ch`` and the wait for its confirm."""
    confirms = Confirms.of(ch)
    confirms.publish(exchange, key, body, props)
    confirms.wait()
