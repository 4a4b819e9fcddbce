"""The side-store records that fence a RabbitMQ delivery whose connection went
(``conveyor._amqp_guard``), on a SQLite side store: a supervisor holding the
running record in its child's name, the child settling through it, and a
stale holder refused once another delivery took over (ADR 0022, 0031, 0034)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor._amqp_guard import RUNNING, SETTLED, Guards, Verdict
from conveyor.brokers import broker_from_url
from conveyor.brokers.base import Broker, Delivery

LEASE = 5.0


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Broker]:
    store = broker_from_url(f"sqlite:///{tmp_path / 'state.db'}")
    yield store
    store.close()


def delivery(token: str) -> Delivery:
    return Delivery(id="m1", queue="q", body=b"", deliveries=1, token=token)


def test_a_supervisor_holds_the_running_record_in_its_child_s_name(state: Broker) -> None:
    child = delivery("111-a")
    supervisor, in_child = Guards(state), Guards(state)
    assert supervisor.stand_in(child, LEASE)
    assert state.lease_holder(RUNNING + "m1") == "111-a"
    # A copy RabbitMQ hands out meanwhile waits once, then is parked.
    copy = Guards(state)
    assert copy.arrival("m1", "222-b", LEASE, waited=False) is Verdict.WAIT
    assert copy.arrival("m1", "222-b", LEASE, waited=True) is Verdict.PARK
    # The child, its channel gone, settles through the record: the copy is dropped.
    assert in_child.settle_lost(child)
    assert state.lease_holder(RUNNING + "m1") is None
    assert copy.arrival("m1", "222-b", LEASE, waited=True) is Verdict.DROP


def test_a_stale_holder_is_refused_once_another_delivery_took_over(state: Broker) -> None:
    stale, fresh = delivery("111-a"), delivery("222-b")
    taker = Guards(state)
    assert taker.arrival("m1", fresh.token, LEASE, waited=True) is Verdict.RUN
    # While the new holder runs it: neither the stale supervisor nor its child.
    assert not Guards(state).stand_in(stale, LEASE)
    assert not Guards(state).settle_lost(stale)
    # After the new holder settled (and released the record): still refused.
    assert taker.settle(fresh)
    assert state.lease_holder(RUNNING + "m1") is None
    assert not Guards(state).stand_in(stale, LEASE)
    assert state.lease_holder(RUNNING + "m1") is None, "the record of a settled message was kept"
    assert not Guards(state).settle_lost(stale)


def test_a_dead_child_s_supervisor_gives_its_record_up(state: Broker) -> None:
    """Handing a dead child's task back releases the record held for it, so the
    waiting copy runs after ``redelivery_wait`` rather than after a lease."""
    child = delivery("111-a")
    supervisor = Guards(state)
    assert supervisor.stand_in(child, LEASE)
    supervisor.release(child)
    assert Guards(state).arrival("m1", "222-b", LEASE, waited=True) is Verdict.RUN
    assert state.lease_holder(SETTLED + "m1") is None
