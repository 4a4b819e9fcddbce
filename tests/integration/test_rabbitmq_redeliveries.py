"""What a dead prefork child held, on RabbitMQ: the supervisor's verdicts reach the
copies RabbitMQ hands out again, although those copies are offered first
(docs/decisions/0030-rabbitmq-redeliveries-wait-for-the-supervisor.md).

A real child process reserves three messages and is SIGKILLed; RabbitMQ hands
them at once to a consumer that is already waiting, and only then does this
test, in the supervisor's place, say what became of them: one ran and failed
for good (``ack``: settled), two were never started (``requeue`` uncounted).
The copies wait ``redelivery_wait`` before they may run, find the verdicts, and
the settled one is dropped while the others keep their delivery count.  The
fault suite runs the same through real workers (``tests/faults``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from conveyor.brokers import Envelope, broker_from_url
from conveyor.brokers.amqp import AMQPBroker
from conveyor.brokers.base import Broker, Delivery

from .processes import wait_for

QUEUE = "killed"
LEASE = 4.0  # the copies wait a quarter of it at most: redelivery_wait=1 s


def hold_until_killed(url: str, conn: Connection) -> None:
    """A prefork child: reserve all three messages, report them, wait to be killed."""
    broker = broker_from_url(url)
    got: list[Delivery] = []
    while len(got) < 3:
        got += broker.reserve([QUEUE], 3 - len(got), lease=60, timeout=5)
    conn.send(got)
    threading.Event().wait()


@pytest.fixture(params=["amqp_quorum_url", "amqp_url"])
def url(request: pytest.FixtureRequest) -> str:
    """Quorum queues count redeliveries exactly; classic ones flag them."""
    return str(request.getfixturevalue(request.param))


@pytest.fixture
def brokers(url: str) -> Iterator[tuple[AMQPBroker, AMQPBroker]]:
    """The supervisor's broker object and a waiting consumer's, in this process."""
    supervisor, receiver = broker_from_url(url), broker_from_url(url)
    assert isinstance(supervisor, AMQPBroker) and isinstance(receiver, AMQPBroker)
    yield supervisor, receiver
    supervisor.close()
    receiver.close()


def killed_child(url: str, producer: Broker,
                 waiting: AMQPBroker | None = None) -> dict[str, Delivery]:
    """Three messages held by a child process that is then SIGKILLed (``waiting``
    starts consuming once the child holds them, before the kill)."""
    producer.enqueue_many([Envelope(id=i, queue=QUEUE, body=i.encode())
                           for i in ("ran", "unstarted-1", "unstarted-2")])
    ours, theirs = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=hold_until_killed,
                                                         args=(url, theirs))
    child.start()
    try:
        assert ours.poll(30), "the child reserved nothing"
        held: list[Delivery] = ours.recv()
        if waiting is not None:
            assert waiting.reserve([QUEUE], 3, lease=LEASE, timeout=0) == []
    finally:
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(10)
    return {d.id: d for d in held}


def parked(broker: Broker, count: int) -> bool:
    """``count`` copies parked, none ready (nor pushed to ``broker`` unread)."""
    [stats] = broker.stats([QUEUE])
    return (stats.ready, stats.delayed) == (0, count)


def test_copies_of_a_dead_childs_messages_wait_for_the_supervisors_verdicts(
        url: str, brokers: tuple[AMQPBroker, AMQPBroker]) -> None:
    supervisor, receiver = brokers
    held = killed_child(url, supervisor, waiting=receiver)
    # RabbitMQ offers the three copies to the waiting consumer before any verdict:
    # none may run yet; each is parked for redelivery_wait.
    got: list[Delivery] = []

    def all_parked() -> bool:
        got.extend(receiver.reserve([QUEUE], 3, lease=LEASE, timeout=0.05))
        return parked(receiver, 3)

    wait_for(all_parked, 10, "the copies to be parked")
    assert got == [], "a copy ran before its supervisor could settle it"
    # Now the supervisor's verdicts: one failed for good, two never started.
    assert supervisor.ack([held["ran"]]) == [True]
    for name in ("unstarted-1", "unstarted-2"):
        supervisor.requeue(held[name], count=False)
    began = time.monotonic()

    def arrived() -> bool:
        got.extend(receiver.reserve([QUEUE], 3, lease=LEASE, timeout=0.1))
        return len(got) == 2 and parked(receiver, 0)

    wait_for(arrived, 10, "the two unstarted copies, and the settled one dropped")
    assert time.monotonic() - began < 3.0
    assert sorted(d.id for d in got) == ["unstarted-1", "unstarted-2"], "the settled one ran"
    assert [d.deliveries for d in got] == [1, 1], "an unstarted delivery was counted"
    assert receiver.ack(got) == [True, True]
    [stats] = receiver.stats([QUEUE])
    assert (stats.ready, stats.delayed, stats.inflight) == (0, 0, 0)


def test_a_delivery_that_counts_still_counts_after_an_uncounted_one(
        url: str, brokers: tuple[AMQPBroker, AMQPBroker]) -> None:
    """The uncounted record is subtracted once: a later delivery of the same message
    counts again, whether RabbitMQ or Conveyor handed it out."""
    supervisor, receiver = brokers
    held = killed_child(url, supervisor)
    supervisor.ack([held["ran"]])
    supervisor.requeue(held["unstarted-2"], count=True)  # died running it: counts
    supervisor.requeue(held["unstarted-1"], count=False)
    got: list[Delivery] = []
    wait_for(lambda: got.extend(receiver.reserve([QUEUE], 3, lease=LEASE, timeout=0.1))
             or len(got) == 2, 10, "the two copies")
    counts = {d.id: d.deliveries for d in got}
    assert counts == {"unstarted-1": 1, "unstarted-2": 2}
    # Its next holder dies too, running it (counted): RabbitMQ hands it out again.
    # Quorum queues count that redelivery; classic ones only flag the message as
    # redelivered, which the uncounted record already explains: their count is a
    # lower bound (docs/decisions/0016-rabbitmq-broker.md).
    counted = 1 if "queue_type=quorum" in url else 0
    [one] = [d for d in got if d.id == "unstarted-1"]
    receiver.ack([d for d in got if d is not one])
    receiver._consumer.drop()
    again: list[Delivery] = []
    wait_for(lambda: again.extend(receiver.reserve([QUEUE], 1, lease=LEASE, timeout=0.1))
             or bool(again), 10, "the copy of the dropped connection")
    assert [(d.id, d.deliveries) for d in again] == [("unstarted-1", 1 + counted)]
    # Conveyor's own requeue, counted, carries the count on.
    assert receiver.requeue(again[0], count=True) is True
    last: list[Delivery] = []
    wait_for(lambda: last.extend(receiver.reserve([QUEUE], 1, lease=LEASE, timeout=0.1))
             or bool(last), 10, "the requeued message")
    assert [(d.id, d.deliveries) for d in last] == [("unstarted-1", 2 + counted)]
    assert receiver.ack(last) == [True]


def test_a_late_holder_still_holds_what_its_channel_holds(
        brokers: tuple[AMQPBroker, AMQPBroker]) -> None:
    """A holder whose renewals came late (a prefork child holding the GIL in C past
    its lease) still holds the delivery: RabbitMQ gave it to no one else, and
    handing it back then would run it twice.  A holder that forgot it loses it at
    its next reserve, as the contract wants."""
    holder, other = brokers
    holder.enqueue_many([Envelope(id=i, queue=QUEUE, body=b"x") for i in ("slow", "forgot")])
    got: list[Delivery] = []
    wait_for(lambda: got.extend(holder.reserve([QUEUE], 2 - len(got), lease=0.2, timeout=0.1))
             or len(got) == 2, 10, "both messages")
    slow, forgot = sorted(got, key=lambda d: d.id != "slow")
    time.sleep(0.4)  # the fault: no renewal for twice the lease
    assert holder.extend([slow], 30) == [True]
    assert other.reserve([QUEUE], 2, lease=30, timeout=0.3) == []
    again = holder.reserve([QUEUE], 2, lease=30, timeout=0)  # hands "forgot" back first
    assert holder.ack([slow, forgot]) == [True, False]
    # Handed back, it comes round again (to this consumer, after redelivery_wait).
    wait_for(lambda: again.extend(holder.reserve([QUEUE], 1, lease=LEASE, timeout=0.1))
             or bool(again), 10, "the forgotten message")
    assert [(d.id, d.deliveries) for d in again] == [("forgot", 2)]
    assert holder.ack(again) == [True]
