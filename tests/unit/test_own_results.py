"""A consumer's own held results (ADR 0038): written together, acks only after the
write, store outages retried then handed back, the thread that flushes late ones."""

from __future__ import annotations

import threading

from conveyor import states
from conveyor.brokers.base import Delivery
from conveyor.worker.own_results import OwnResults
from tests.unit.test_result_buffer import FlakyStore, leased, success


class Acks:
    """Records what ``after`` was told, in order, and what was stored at the time."""

    def __init__(self, store: FlakyStore) -> None:
        self.store = store
        self.calls: list[tuple[list[str], bool, list[bool]]] = []
        self.called = threading.Event()

    def __call__(self, deliveries: list[Delivery], stored: bool) -> None:
        seen = [self.store.get(d.id) is not None for d in deliveries]
        self.calls.append(([d.id for d in deliveries], stored, seen))
        self.called.set()


def held(store: FlakyStore, after: Acks, n: int, **options: float) -> OwnResults:
    own = OwnResults(lambda: store, ttl=60, lease=30, after=after, **options)
    for delivery in leased(n):
        own.add(delivery, success(delivery.id, "ok"))
    return own


def test_held_results_are_written_in_one_call_before_their_acks() -> None:
    store = FlakyStore()
    after = Acks(store)
    own = held(store, after, 3, delay=60)
    assert len(own) == 3 and store.calls == 0  # nothing written yet: held
    assert own.flush()
    assert store.calls == 1
    assert after.calls == [(["m0", "m1", "m2"], True, [True, True, True])]
    assert store.get("m1") is not None and store.get("m1").state == states.SUCCESS


def test_a_store_outage_keeps_them_then_a_later_flush_writes_them() -> None:
    store = FlakyStore()
    store.failures = 1
    after = Acks(store)
    own = held(store, after, 2, delay=60)
    assert not own.flush()
    assert after.calls == [] and len(own) == 2  # not acknowledged: not written
    own._retry_at = 0.0  # the pause before the next try is over
    assert own.flush()
    assert after.calls == [(["m0", "m1"], True, [True, True])]


def test_past_a_lease_of_outage_they_are_handed_back() -> None:
    store = FlakyStore()
    store.failures = 1
    after = Acks(store)
    own = held(store, after, 2, delay=60)
    own._since -= 31  # the oldest has waited longer than its lease
    assert not own.flush()
    assert after.calls == [(["m0", "m1"], False, [False, False])]
    assert len(own) == 0


def test_a_full_batch_is_written_at_once() -> None:
    store = FlakyStore()
    after = Acks(store)
    held(store, after, 4, delay=60, max_batch=4)
    assert store.calls == 1 and after.calls[0][0] == ["m0", "m1", "m2", "m3"]


def test_the_thread_writes_what_waited_its_delay() -> None:
    store = FlakyStore()
    after = Acks(store)
    held(store, after, 2, delay=0.001)
    assert after.called.wait(5)  # no flush from the caller: the thread did it
    assert after.calls == [(["m0", "m1"], True, [True, True])]
