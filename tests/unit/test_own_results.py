"""A consumer's own held results (ADR 0038): written together, acks only after the
write, store outages retried then handed back, the thread that flushes late ones."""

from __future__ import annotations

import threading

import pytest

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
    own._buffer._retry_at = 0.0  # the pause before the next try is over
    assert own.flush()
    assert after.calls == [(["m0", "m1"], True, [True, True])]


def test_past_a_lease_of_outage_they_are_handed_back() -> None:
    store = FlakyStore()
    store.failures = 1
    after = Acks(store)
    own = held(store, after, 2, delay=60)
    own._buffer._since -= 31  # the oldest has waited longer than its lease
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


class OwnReporter:
    """A reporter like a RabbitMQ child's (``OwnLeases``): the consumer acknowledges,
    and is told when a held result was written."""

    acks = False
    writes = False

    def __init__(self, store: object) -> None:
        self.store = store
        self.events: list[tuple[str, str, bool]] = []

    def held(self, deliveries: object) -> None: ...
    def running(self, *args: object, **kwargs: object) -> None: ...
    def flush(self) -> None: ...

    def done(self, delivery: Delivery, outcome: object) -> None:
        self.events.append(("done", delivery.id, getattr(outcome, "write", None) is not None))

    def written(self, delivery: Delivery, acked: bool) -> None:
        stored = self.store.get(delivery.id) is not None  # type: ignore[attr-defined]
        self.events.append(("written", delivery.id, acked and stored))


@pytest.mark.parametrize("late", [True, False])
def test_a_busy_consumer_holds_results_and_writes_every_one(late: bool) -> None:
    """Late acks: held, written together, acknowledged after.  ``acks_late=False``:
    acknowledged before the run, so its result is written at once, not held."""
    import uuid

    from conveyor import Conveyor
    from conveyor.worker.consumer import Consumer
    from conveyor.worker.execute import Executor

    app = Conveyor("own", broker=f"memory://own-{uuid.uuid4().hex}",
                   backend=f"memory://own-{uuid.uuid4().hex}", set_as_current=False)

    @app.task(name="double", acks_late=late)
    def double(x: int) -> int:
        return 2 * x

    ids = [app.send_task("double", [i]).id for i in range(4)]
    reporter = OwnReporter(app.backend)
    consumer = Consumer(Executor(app, "host"), lambda: app.broker, ["default"], 4, 30.0,
                        reporter, threading.Event(), max_tasks=4, poll=0.01)
    if consumer._own is not None:
        # The 5 ms age limit, not the batch, decides when a loaded machine is
        # slower than that between two tasks: out of the way, only the next
        # reserve (after the prefetch of 4) or the consumer's end flushes.
        consumer._own.delay = 60.0
    consumer.run()
    assert [app.AsyncResult(i).get(timeout=1) for i in ids] == [0, 2, 4, 6]
    assert app.broker.stats(["default"])[0].ready == 0
    done = [e for e in reporter.events if e[0] == "done"]
    written = [e for e in reporter.events if e[0] == "written"]
    if late:
        assert [e[2] for e in done] == [True, True, True, True]  # all held: a prefetch of 4
        assert sorted(e[1] for e in written) == sorted(ids)
        assert all(ok for _, _, ok in written)  # stored before each was acknowledged
        assert reporter.events.index(done[-1]) < reporter.events.index(written[0])
    else:
        assert written == [] and [e[2] for e in done] == [False] * 4
    app.close()
