"""The broker contract: move opaque message bodies with leases.

A broker knows nothing of tasks.  Producers hand it :class:`Envelope` values
(an id, a queue, a priority, an optional ETA and the body bytes); consumers
*reserve* messages, which leases them for a while, and then *ack* (done),
*requeue* (give back, maybe later) or *dead_letter* (give up, with a reason).
A lease that runs out without an ack makes the message reservable again: this
is how nothing is lost when a worker dies.

Rules every implementation keeps (``tests/contract/broker_contract.py``
``BrokerContract`` checks them; each broker's test module subclasses it):

* Order: lower ``priority`` first (0..9, 0 most urgent: Celery's order on
  Redis, docs/decisions/0008-celery-priority-order.md), then the order of
  ``queues`` as passed to :meth:`reserve`, then first-in first-out.
* A message with an ``eta`` in the future is not handed out before it; it
  becomes due within a second of its time.
* Each reservation gets a fresh ``token``.  ``ack``, ``requeue``,
  ``dead_letter`` and ``extend`` act only when the token still holds the
  lease; a stale holder (whose lease expired and moved on) is told ``False``
  and changes nothing.  This fences a worker that was paused past its lease.
* ``deliveries`` counts how many times the message was handed out without
  being explicitly given back by ``requeue(count=False)``.  The worker uses it
  to dead-letter a message whose worker keeps dying.
* No message is handed to two consumers at once, across processes.
* Idempotency: an envelope with an ``idempotency_key`` is enqueued only if no
  message with that key was enqueued within ``idempotency_ttl`` seconds; the
  call returns the id of the message that owns the key (checked and stored
  atomically).
* An envelope whose id is already stored (ready, delayed or leased) is not
  stored again; this makes a retry written twice (a crash between writing
  the retry and acking the attempt) one message.
* Leases (``acquire_lease``) are named mutual-exclusion records with a
  holder and a time to live, for beat's leader election.
* Revocations are stored here too, so workers started later still see them.
* Rate slots (``take_rate_slot``) space out the starts under named global rate
  limits shared by every worker of the broker: slots are taken atomically, so
  two workers never get the same one.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_PRIORITY = 9


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a producer hands the broker."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta: float | None = None  # Unix time; None or past means "now"
    idempotency_key: str | None = None
    idempotency_ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A leased message.  ``token`` proves the lease in later calls.

    ``revoked`` is what the broker knew about the task's revocation when it
    leased the message, if it checked in the same call (``None``: it did
    not, ask :meth:`Broker.revoked`); it saves consumers a round trip.
    """

    id: str
    queue: str
    body: bytes
    deliveries: int
    token: str
    priority: int = 0
    revoked: bool | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the worker gave up on, with why and when."""

    id: str
    queue: str
    body: bytes
    reason: str
    failed_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for one queue: ready now, waiting for an ETA, leased, dead; and how long
    the oldest ready message has waited, the first sign of a queue nobody consumes.

    ``oldest_age`` is in seconds, counted from when the message was sent, or from
    when its ETA or a lapsed lease made it ready; 0.0 when nothing is ready; None
    when the broker cannot tell (RabbitMQ does not show a queue's head without
    taking it).
    """

    queue: str
    ready: int
    delayed: int
    inflight: int
    dead: int
    oldest_age: float | None = None


class Broker(abc.ABC):
    """One broker connection (or pool).  Thread-safe; not shared across fork."""

    url: str
    #: True when only the connection that reserved a delivery can acknowledge,
    #: renew or hand it back (RabbitMQ: a delivery tag belongs to its channel).
    #: Prefork children then settle and renew their own deliveries, instead of
    #: their supervisor doing it from its connection.
    leases_follow_connection: bool = False

    # -- producing -------------------------------------------------------
    @abc.abstractmethod
    def enqueue(self, envelope: Envelope) -> str:
        """Store one message; return its id (an earlier id for a repeated key)."""

    @abc.abstractmethod
    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Store many messages in as few round trips as the backend allows."""

    def sender(self, queue: str, priority: int) -> Callable[[str, bytes], str] | None:
        """A send prepared once for messages of ``queue`` and ``priority`` sent now
        without an idempotency key (a task's ``.delay()`` calls), or None.

        ``send(id, body)`` stores the message as ``enqueue(Envelope(id, queue,
        body, priority))`` would (same keys, same dedupe, same errors) and
        returns what it would.  A broker whose enqueue has per-message work
        that does not depend on the message (packing a command's constant
        arguments) does it here, once; the default, None, sends each through
        :meth:`enqueue`.
        """
        return None

    # -- consuming -------------------------------------------------------
    @abc.abstractmethod
    def reserve(
        self, queues: Sequence[str], count: int, lease: float, timeout: float
    ) -> list[Delivery]:
        """Lease up to ``count`` ready messages; wait up to ``timeout`` s for the first."""

    @abc.abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Remove finished messages; ``False`` where the lease was no longer held."""

    def ack_soon(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Acknowledge finished messages within a few milliseconds, together with
        others: a worker's consumer calls this after a task, :meth:`flush_acks` when it
        stops.  ``False`` where the lease was no longer held.  A broker whose ack is
        already cheap sends it at once (this default); one that holds it back
        (RabbitMQ: docs/decisions/0035-rabbitmq-acks-sent-together.md) keeps the ack
        late -- the task finished and its result is written -- and accepts that a
        task finished in the last milliseconds before its process died runs again,
        as the prefork supervisor's batched acks do (:mod:`conveyor.worker.acks`)."""
        return self.ack(deliveries)

    def flush_acks(self) -> None:  # noqa: B027 - optional hook
        """Send what :meth:`ack_soon` holds back, now."""

    @abc.abstractmethod
    def requeue(self, delivery: Delivery, delay: float = 0.0, count: bool = False) -> bool:
        """Give a message back, due after ``delay`` s.

        ``count=False`` (a graceful hand-back) does not count as a delivery;
        ``count=True`` (its worker died) does.
        """

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Move a leased message to its queue's dead-letter list with ``reason``.

        A queue holds at most one dead letter per message id: dead-lettering
        an id again (it was replayed or re-sent, and failed again) replaces
        the earlier entry with the newer body, reason and time.
        """

    @abc.abstractmethod
    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        """Renew leases to ``lease`` s from now; ``False`` where no longer held."""

    # -- inspection and repair --------------------------------------------
    @abc.abstractmethod
    def queues(self) -> list[str]:
        """Every queue that has held a message."""

    def queue_arguments(self, queue: str) -> dict[str, Any] | None:
        """The arguments ``queue`` is declared with on the broker, or None where
        queues are not declared.  None here: SQLite, Redis, PostgreSQL and memory
        queues are addressed by name and every one of them orders messages by the
        app's priority steps (0..9, lower first: ``conveyor._priority``), so no
        queue has a maximum priority or any other argument of its own."""
        return None

    @abc.abstractmethod
    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        """Counts per queue (all known queues when ``queues`` is None)."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Drop ready and delayed messages of ``queue``; return how many."""

    @abc.abstractmethod
    def dead_letters(self, queue: str, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Dead letters of ``queue``, newest first."""

    @abc.abstractmethod
    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Put dead letters back on their queue (all when ``ids`` is None)."""

    @abc.abstractmethod
    def discard_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters for good (all when ``ids`` is None)."""

    # -- control plane ---------------------------------------------------
    @abc.abstractmethod
    def revoke(self, ids: Sequence[str], ttl: float, terminate: bool = False) -> None:
        """Remember that these task ids are revoked, for ``ttl`` seconds.

        ``terminate`` also asks workers to stop them if they are running.
        """

    @abc.abstractmethod
    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        """Which of ``ids`` are revoked, each with its ``terminate`` flag."""

    @abc.abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the named lease; ``False`` if someone else holds it."""

    @abc.abstractmethod
    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up if ``holder`` holds it."""

    @abc.abstractmethod
    def lease_holder(self, name: str) -> str | None:
        """Who holds the named lease now, if anyone."""

    @abc.abstractmethod
    def take_rate_slot(self, limits: Sequence[tuple[str, float]], within: float) -> float:
        """Reserve one start slot under every named global rate limit of ``limits``.

        ``limits`` pairs a name with the least time between two starts under
        it: slots of one name are at least that far apart, whoever takes them
        (a token bucket of capacity one, kept as the time of its next free
        slot).  The caller's slot is the latest of the names' next free slots;
        returns the seconds from now to it, ``0.0`` when it is now.  When that
        is at most ``within`` seconds the slot is the caller's under every name
        at once (it must start then, not before); when it is further away
        nothing is taken, so a caller that asks too early holds no slot
        hostage, and may ask again ``result - within`` seconds later.
        """

    def ping(self) -> bool:
        """True when the broker answers."""
        self.stats([])
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

__all__ = ["MAX_PRIORITY", "Broker", "DeadLetter", "Delivery", "Envelope", "QueueStats"]
