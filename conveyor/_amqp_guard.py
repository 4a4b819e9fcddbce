"""Side-store records that keep a RabbitMQ message from running twice.

A RabbitMQ lease is the channel holding the delivery, and it goes when the
channel goes: a network blip, ``close_all_connections``, or the server's
``consumer_timeout`` closing the channel of a task that runs longer than it
(docs/decisions/0022-rabbitmq-reconnection.md).  RabbitMQ then hands the
message out again while its task may still be running.  Two records in the
broker's side store (``state_url``) tell the next receiver what to do:

* ``conveyor.running:<id>`` -- a lease (time to live: the broker lease)
  held by the delivery token running the message.  It is taken when a
  delivery outlives its lease while its channel still holds it, and by
  whoever receives a redelivered message; the holder renews it with its
  lease.  A redelivery that finds it held is *parked*: re-published through
  the delay ladder for half a lease and checked again on arrival.
* ``conveyor.settled:<id>`` -- written (for a day) before a guarded delivery
  is acknowledged, and by a supervisor settling a child it killed: a copy
  that arrives later is dropped.

A holder that dies stops renewing: its running record lapses within a lease
and the next parked copy runs.  A prefork supervisor also holds the record
of each task its children run, in the child's name (``stand_in``): a child
holding the GIL past two heartbeats loses its connection like a paused
worker, and keeps its task through that record; its late acknowledgement
finds its channel gone and settles through the record (``settle_lost``),
or is refused if another delivery took over
(docs/decisions/0034-rabbitmq-heartbeat-from-the-lease.md).  A message
therefore runs twice only if its holder's renewals stop while it still runs
(the side store unreachable for a lease) -- the at-least-once rule every
broker keeps.

A prefork child that dies takes its connection with it, and RabbitMQ hands its
messages out again at once, before the child's supervisor has said what became
of them (docs/decisions/0031-rabbitmq-redeliveries-wait-for-the-supervisor.md).
So a redelivered copy that finds neither record *waits*: it is parked for a
short ``redelivery_wait`` before it may run, and meanwhile the supervisor
writes its verdict:

* ``conveyor.settled:<id>`` -- the task was settled (``reject_on_worker_lost``
  off: recorded as failed with WorkerLostError, acknowledged): the copy is dropped.
* ``conveyor.uncounted:<id>:<k>`` (k = 1, 2, ...) -- one record per delivery
  that does not count towards ``max_deliveries``: a message the child had
  prefetched and never started.  RabbitMQ's ``x-delivery-count`` counted it;
  the copy subtracts the records its message does not carry as folded in
  already (``x-conveyor-uncounted``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum

from conveyor.brokers.base import Broker, Delivery
from conveyor.exceptions import ConveyorError

RUNNING = "conveyor.running:"
SETTLED = "conveyor.settled:"
UNCOUNTED = "conveyor.uncounted:"
SETTLED_TTL = 86400.0  # also how long uncounted records are kept
_MAX_UNCOUNTED = 1000  # records probed per message: far above any max_deliveries
_log = logging.getLogger("conveyor.brokers.amqp")


class Verdict(Enum):
    """What to do with a message RabbitMQ handed out again."""

    RUN = "run"  # nobody runs it and it was not settled: run it (this receiver holds it)
    PARK = "park"  # its holder still runs it: check again later
    WAIT = "wait"  # handed out again, no verdict yet: give a dead holder's supervisor time
    DROP = "drop"  # it was settled elsewhere


@dataclass
class _Guard:
    delivery_id: str
    deadline: float  # monotonic: past it, the record has lapsed unrenewed


class Guards:
    """This process's running records, and the checks on arrival."""

    def __init__(self, state: Broker) -> None:
        self._state = state
        self._held: dict[str, _Guard] = {}  # by delivery token
        self._lock = threading.Lock()

    def holds(self, token: str) -> bool:
        with self._lock:
            guard = self._held.get(token)
            return guard is not None and guard.deadline > time.monotonic()

    def arrival(self, message_id: str, token: str, lease: float, waited: bool) -> Verdict:
        """Check a redelivered or parked message; ``RUN`` takes its running record.

        The running record is read before the settled one: a holder writes
        *settled* before giving *running* up, so one of the two is always seen.
        A copy RabbitMQ handed out again has to ``WAIT`` unless it ``waited``
        already (held back, or parked): when it finds neither record, and also
        when it finds a running record, which a dead child's supervisor may be
        about to give up (it held it in the child's name: :meth:`stand_in`).
        A side store out of reach runs the message (at least once)."""
        try:
            if self._state.lease_holder(RUNNING + message_id) is not None:
                return Verdict.PARK if waited else Verdict.WAIT
            if self._state.lease_holder(SETTLED + message_id) is not None:
                return Verdict.DROP
            if not waited:
                return Verdict.WAIT
            if not self._state.acquire_lease(RUNNING + message_id, token, lease):
                return Verdict.PARK  # another receiver took it a moment ago
        except ConveyorError as exc:
            _log.warning("cannot check redelivered message %s in the side store (%s); "
                         "running it", message_id, exc)
            return Verdict.RUN
        self._keep(token, message_id, lease)
        return Verdict.RUN

    def uncounted(self, message_id: str) -> int:
        """Deliveries of ``message_id`` recorded as not counting (``uncount``); 0 if the
        side store is out of reach (the count is then a little high: a lower limit)."""
        try:
            return uncounted(self._state, message_id)
        except ConveyorError as exc:
            _log.warning("cannot read the uncounted deliveries of %s (%s)", message_id, exc)
            return 0

    def renew(self, delivery: Delivery, lease: float, take: bool) -> bool:
        """Renew ``delivery``'s running record (``take``: create it if missing);
        whether this process holds it now."""
        if not take and not self.holds(delivery.token):
            return False
        try:
            kept = self._state.acquire_lease(RUNNING + delivery.id, delivery.token, lease)
        except ConveyorError as exc:
            _log.warning("cannot renew the side-store lease of %s: %s", delivery.id, exc)
            return self.holds(delivery.token)
        if kept:
            self._keep(delivery.token, delivery.id, lease)
        else:
            self._forget(delivery.token)
        return kept

    def stand_in(self, delivery: Delivery, lease: float) -> bool:
        """Take or renew the running record of a delivery another process holds (a
        prefork supervisor, for its child's running task), in that holder's name.

        A child holding the GIL in C, or stopped alone, sends no heartbeats, and
        RabbitMQ closes its connection (``_amqp.lease_heartbeat``); the record
        parks the copy until the child settles it (:meth:`settle_lost`).  A record
        of a message settled meanwhile (the copy ran while this whole worker was
        paused) is given up at once: ``False``, as for one another holder has."""
        name = RUNNING + delivery.id
        try:
            if not self._state.acquire_lease(name, delivery.token, lease):
                self._forget(delivery.token)
                return False
            # Read after the take: a holder marks *settled* before releasing, so a
            # record found free because its copy had finished is caught here.
            if self._state.lease_holder(SETTLED + delivery.id) is not None:
                self._state.release_lease(name, delivery.token)
                self._forget(delivery.token)
                return False
        except ConveyorError as exc:
            _log.warning("cannot hold the side-store lease of %s for its process: %s",
                         delivery.id, exc)
            return self.holds(delivery.token)
        self._keep(delivery.token, delivery.id, lease)
        return True

    def settle_lost(self, delivery: Delivery) -> bool:
        """Settle a delivery whose channel went (its connection closed while this
        process ran it) if its running record is still in its name (this process's
        renewal, or its supervisor's :meth:`stand_in`): the copy RabbitMQ handed
        out is parked meanwhile, and now dropped.  ``False``: another delivery took
        over, or the message was settled elsewhere -- the acknowledgement is refused."""
        self._forget(delivery.token)
        try:
            if self._state.lease_holder(SETTLED + delivery.id) is not None or \
                    self._state.lease_holder(RUNNING + delivery.id) != delivery.token:
                return False
            mark(self._state, delivery.id)
        except ConveyorError as exc:
            _log.warning("cannot settle %s in the side store: %s", delivery.id, exc)
            return False
        with contextlib.suppress(ConveyorError):  # else it lapses within a lease
            self._state.release_lease(RUNNING + delivery.id, delivery.token)
        return True

    def settle(self, delivery: Delivery) -> bool:
        """Mark ``delivery`` settled, then give its running record up; ``False`` if the
        mark could not be written (a parked copy will run again)."""
        try:
            mark(self._state, delivery.id)
        except ConveyorError as exc:
            _log.warning("cannot record %s as settled in the side store: %s", delivery.id, exc)
            return False
        self.release(delivery)
        return True

    def release(self, delivery: Delivery) -> None:
        """Give the running record up: a parked copy may run when it arrives."""
        if self._forget(delivery.token):
            with contextlib.suppress(ConveyorError):  # else it lapses within a lease
                self._state.release_lease(RUNNING + delivery.id, delivery.token)

    def _keep(self, token: str, message_id: str, lease: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._held[token] = _Guard(message_id, now + lease)
            for stale in [t for t, g in self._held.items() if g.deadline < now - lease]:
                del self._held[stale]

    def _forget(self, token: str) -> bool:
        with self._lock:
            return self._held.pop(token, None) is not None


def mark(state: Broker, message_id: str) -> None:
    """Record ``message_id`` as settled: a copy that arrives later is dropped."""
    state.acquire_lease(SETTLED + message_id, "settled", SETTLED_TTL)


def unmark(state: Broker, message_ids: list[str]) -> None:
    """A replayed dead letter is a new start: its old settled mark must not drop it,
    nor its old uncounted deliveries lower its new count."""
    for message_id in message_ids:
        state.release_lease(SETTLED + message_id, "settled")
        for k in range(1, uncounted(state, message_id) + 1):
            state.release_lease(f"{UNCOUNTED}{message_id}:{k}", "uncounted")


def uncount(state: Broker, message_id: str) -> None:
    """Record one more delivery of ``message_id`` that does not count (a prefork child
    died holding it unstarted).  Each is a record of its own, taken with the side
    store's atomic lease, so two writers never merge theirs into one."""
    for k in range(1, _MAX_UNCOUNTED + 1):
        if state.acquire_lease(f"{UNCOUNTED}{message_id}:{k}", "uncounted", SETTLED_TTL):
            return


def uncounted(state: Broker, message_id: str) -> int:
    """How many deliveries of ``message_id`` were recorded as not counting: read on
    a redelivery only, usually one miss."""
    for k in range(1, _MAX_UNCOUNTED + 1):
        if state.lease_holder(f"{UNCOUNTED}{message_id}:{k}") is None:
            return k - 1
    return _MAX_UNCOUNTED
