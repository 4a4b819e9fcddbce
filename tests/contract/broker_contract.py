"""The broker contract (conveyor/brokers/base.py): ``BrokerContract``.

Not collected on its own (the name does not start with ``Test``). Each broker's
module (``tests/contract/test_broker_<backend>.py``) subclasses it and overrides
the one hook, the ``url`` fixture, so a new broker gets every rule below by
writing one small class (docs/architecture.md, "Adding a broker").
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from typing import ClassVar

import pytest

from conveyor._message import Message
from conveyor.brokers import Broker, Envelope, broker_from_url


def env(body: str = "x", queue: str = "q", **kw: object) -> Envelope:
    return Envelope(id=uuid.uuid4().hex, queue=queue, body=body.encode(), **kw)  # type: ignore[arg-type]


def drain(broker: Broker, queues: list[str], count: int = 100) -> list[str]:
    got = broker.reserve(queues, count, lease=30, timeout=0)
    broker.ack(got)
    return [d.body.decode() for d in got]


def _consume(url: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    b = broker_from_url(url)
    seen: list[str] = []
    while True:
        got = b.reserve(["q"], 5, lease=30, timeout=0.5)
        if not got:
            break
        seen.extend(d.id for d in got)
        b.ack(got)
    out.put(seen)


def _take_slots(url: str, count: int) -> float:
    """Take ``count`` slots; return when the first was taken (Unix time)."""
    b = broker_from_url(url)
    try:
        first = time.time()
        for _ in range(count):
            b.take_rate_slot([("shared", 1.0)], within=60)
        return first
    finally:
        b.close()


class BrokerContract:
    """The broker protocol's rules; a backend's test class subclasses this and
    overrides the ``url`` fixture (and a capability flag when a documented rule of
    the backend is weaker)."""

    #: Opened from several processes, it is one broker (``memory://`` is not).
    shared_across_processes: ClassVar[bool] = True
    #: Serves priority 0 first (RabbitMQ 3.10 quorum queues have no priorities).
    has_priorities: ClassVar[bool] = True
    #: Stores a message id once (RabbitMQ cannot look a message id up).
    stores_an_id_once: ClassVar[bool] = True
    #: Tells how long the oldest ready message has waited (RabbitMQ cannot look at a
    #: queue's head without taking it, and then says "unknown": None).
    knows_oldest_age: ClassVar[bool] = True

    @pytest.fixture
    def url(self) -> str:
        """The one hook: a URL ``broker_from_url`` opens, empty for this test."""
        raise NotImplementedError(f"{type(self).__name__} must override the url fixture")

    @pytest.fixture
    def broker(self, url: str) -> Iterator[Broker]:
        b = broker_from_url(url)
        yield b
        b.close()

    def _needs_processes(self) -> None:
        if not self.shared_across_processes:
            pytest.skip("the memory broker lives in one process")

    def test_round_trip_keeps_body_bytes(self, broker: Broker) -> None:
        body = bytes(range(256))
        e = Envelope(id="m1", queue="q", body=body)
        assert broker.enqueue(e) == "m1"
        [d] = broker.reserve(["q"], 10, lease=30, timeout=1)
        assert (d.id, d.queue, d.body, d.deliveries) == ("m1", "q", body, 1)
        assert broker.ack([d]) == [True]
        assert broker.reserve(["q"], 10, lease=30, timeout=0) == []

    def test_fifo_within_a_queue(self, broker: Broker) -> None:
        for i in range(20):
            broker.enqueue(env(str(i)))
        assert drain(broker, ["q"]) == [str(i) for i in range(20)]

    def test_lower_priority_first_then_fifo(self, broker: Broker) -> None:
        """Celery on Redis: kombu serves priority 0 first, 9 last."""
        if not self.has_priorities:
            pytest.skip("RabbitMQ 3.10 quorum queues have no priorities: first in, first out "
                        "(docs/decisions/0016-rabbitmq-broker.md)")
        broker.enqueue(env("late1", priority=9))
        broker.enqueue(env("urgent1", priority=0))
        broker.enqueue(env("mid", priority=5))
        broker.enqueue(env("urgent2", priority=0))
        broker.enqueue(env("late2", priority=9))
        assert drain(broker, ["q"]) == ["urgent1", "urgent2", "mid", "late1", "late2"]

    def test_queue_order_breaks_priority_ties(self, broker: Broker) -> None:
        broker.enqueue(env("b1", queue="b"))
        broker.enqueue(env("a1", queue="a"))
        assert drain(broker, ["a", "b"], count=1) == ["a1"]
        assert drain(broker, ["a", "b"], count=1) == ["b1"]

    def test_reserve_takes_at_most_count(self, broker: Broker) -> None:
        broker.enqueue_many([env(str(i)) for i in range(10)])
        first = broker.reserve(["q"], 3, lease=30, timeout=0)
        assert len(first) == 3
        assert len({d.token for d in first}) == 3

    def test_enqueue_many_returns_ids_in_order(self, broker: Broker) -> None:
        envs = [env(str(i)) for i in range(50)]
        assert broker.enqueue_many(envs) == [e.id for e in envs]
        assert drain(broker, ["q"]) == [str(i) for i in range(50)]

    def test_empty_reserve_waits_about_the_timeout(self, broker: Broker) -> None:
        start = time.monotonic()
        assert broker.reserve(["q"], 1, lease=30, timeout=0.3) == []
        assert 0.25 <= time.monotonic() - start < 2.0

    def test_blocked_reserve_wakes_on_enqueue(self, broker: Broker, url: str) -> None:
        producer = broker_from_url(url)
        timer = threading.Timer(0.2, lambda: producer.enqueue(env("late")))
        timer.start()
        start = time.monotonic()
        got = broker.reserve(["q"], 1, lease=30, timeout=5)
        elapsed = time.monotonic() - start
        timer.join()
        assert [d.body for d in got] == [b"late"]
        assert elapsed < 1.5

    def test_expired_lease_is_handed_out_again_and_fences_the_old_holder(
            self, broker: Broker) -> None:
        broker.enqueue(env("job"))
        [first] = broker.reserve(["q"], 1, lease=0.3, timeout=0)
        deadline = time.monotonic() + 5
        again: list = []
        while not again and time.monotonic() < deadline:
            again = broker.reserve(["q"], 1, lease=30, timeout=0.2)
        [second] = again
        assert second.id == first.id and second.deliveries == 2
        assert second.token != first.token
        assert broker.ack([first]) == [False]
        assert broker.extend([first], 30) == [False]
        assert broker.requeue(first) is False
        assert broker.dead_letter(first, "stale") is False
        assert broker.ack([second]) == [True]

    def test_extended_lease_is_not_handed_out(self, broker: Broker) -> None:
        broker.enqueue(env("long"))
        [d] = broker.reserve(["q"], 1, lease=0.4, timeout=0)
        for _ in range(6):  # 1.2 s, three times the lease
            assert broker.extend([d], 0.4) == [True]
            assert broker.reserve(["q"], 1, lease=30, timeout=0.2) == []
        assert broker.ack([d]) == [True]

    def test_requeue_without_count_keeps_delivery_count(self, broker: Broker) -> None:
        broker.enqueue(env("job"))
        [d] = broker.reserve(["q"], 1, lease=30, timeout=0)
        assert broker.requeue(d) is True
        [d2] = broker.reserve(["q"], 1, lease=30, timeout=0)
        assert d2.deliveries == 1
        assert broker.requeue(d2, count=True) is True
        [d3] = broker.reserve(["q"], 1, lease=30, timeout=0)
        assert d3.deliveries == 2

    def test_requeue_with_delay_waits(self, broker: Broker) -> None:
        broker.enqueue(env("job"))
        [d] = broker.reserve(["q"], 1, lease=30, timeout=0)
        broker.requeue(d, delay=0.6)
        assert broker.reserve(["q"], 1, lease=30, timeout=0.2) == []
        got = broker.reserve(["q"], 1, lease=30, timeout=2.0)
        assert [x.id for x in got] == [d.id]

    def test_delayed_message_is_due_within_a_second_of_its_eta(self, broker: Broker) -> None:
        eta = time.time() + 0.8
        broker.enqueue(env("later", eta=eta))
        broker.enqueue(env("now"))
        assert drain(broker, ["q"]) == ["now"]
        [stats] = broker.stats(["q"])
        assert stats.delayed == 1 and stats.ready == 0
        got = broker.reserve(["q"], 1, lease=30, timeout=3)
        assert [d.body for d in got] == [b"later"]
        assert time.time() >= eta - 0.01
        assert time.time() < eta + 1.0

    def test_dead_letter_keeps_reason_and_body_and_can_replay(self, broker: Broker) -> None:
        e = env("poison")
        broker.enqueue(e)
        [d] = broker.reserve(["q"], 1, lease=30, timeout=0)
        assert broker.dead_letter(d, "body is not JSON") is True
        [letter] = broker.dead_letters("q")
        assert (letter.id, letter.body, letter.reason) == (e.id, b"poison", "body is not JSON")
        assert broker.stats(["q"])[0].dead == 1
        assert broker.replay_dead("q", [e.id]) == 1
        assert broker.dead_letters("q") == []
        assert drain(broker, ["q"]) == ["poison"]

    def test_a_message_dead_lettered_again_replaces_its_earlier_letter(
            self, broker: Broker) -> None:
        e = env("poison")
        broker.enqueue(e)
        [d] = broker.reserve(["q"], 1, lease=30, timeout=0)
        broker.dead_letter(d, "first failure")
        broker.enqueue(Envelope(id=e.id, queue="q", body=b"poison again"))  # re-sent, same id
        [d] = broker.reserve(["q"], 1, lease=30, timeout=0)
        assert broker.dead_letter(d, "second failure") is True
        [letter] = broker.dead_letters("q")
        assert (letter.id, letter.body, letter.reason) == (e.id, b"poison again", "second failure")
        assert broker.stats(["q"])[0].dead == 1

    def test_discard_dead(self, broker: Broker) -> None:
        for i in range(3):
            broker.enqueue(env(str(i)))
        for d in broker.reserve(["q"], 3, lease=30, timeout=0):
            broker.dead_letter(d, "bad")
        assert broker.discard_dead("q") == 3
        assert broker.stats(["q"])[0].dead == 0

    def test_stats_and_purge(self, broker: Broker) -> None:
        broker.enqueue_many([env(str(i)) for i in range(5)])
        broker.enqueue(env("later", eta=time.time() + 60))
        held = broker.reserve(["q"], 2, lease=30, timeout=0)
        [s] = broker.stats(["q"])
        assert (s.queue, s.ready, s.delayed, s.inflight, s.dead) == ("q", 3, 1, 2, 0)
        assert "q" in broker.queues()
        assert broker.purge("q") == 4
        [s] = broker.stats(["q"])
        assert (s.ready, s.delayed, s.inflight) == (0, 0, 2)
        assert broker.ack(held) == [True, True]

    def test_stats_tell_how_long_the_oldest_ready_message_has_waited(self,
                                                                     broker: Broker) -> None:
        """The monitor's "is it working?": a queue whose oldest message keeps ageing has
        no consumer.  Bodies are real messages (Redis reads the send time from them)."""
        def sent(text: str, **kw: object) -> Envelope:
            message = Message(id=uuid.uuid4().hex, task=text, queue="q")
            return Envelope(id=message.id, queue="q", body=message.encode(), **kw)  # type: ignore[arg-type]

        broker.enqueue(sent("first"))
        if not self.knows_oldest_age:
            assert broker.stats(["q"])[0].oldest_age is None  # "unknown", never a made-up 0
            return
        started = time.time()
        deadline = time.monotonic() + 10
        while (age := broker.stats(["q"])[0].oldest_age) is not None and age < 1.0:
            assert age <= time.time() - started + 0.5  # it grows with the clock, no faster
            assert time.monotonic() < deadline, "the oldest message's age does not grow"
            time.sleep(0.05)  # pacing the poll: the test waits for time itself to pass
        broker.enqueue(sent("second"))
        broker.enqueue(sent("later", eta=time.time() + 60))
        [both] = broker.stats(["q"])
        assert both.oldest_age is not None and both.oldest_age >= 1.0  # the oldest, not the newest
        first = broker.reserve(["q"], 1, lease=30, timeout=0)
        assert [d.id for d in first] and broker.ack(first) == [True]
        [rest] = broker.stats(["q"])
        assert rest.ready == 1 and rest.oldest_age is not None
        assert rest.oldest_age < both.oldest_age - 0.5  # now the second's, a second younger
        broker.ack(broker.reserve(["q"], 1, lease=30, timeout=0))
        [empty] = broker.stats(["q"])
        assert (empty.ready, empty.delayed, empty.oldest_age) == (0, 1, 0.0)  # ETA: not waiting

    def test_idempotency_key_enqueues_once(self, broker: Broker) -> None:
        first = env("a", idempotency_key="order-7", idempotency_ttl=60)
        second = env("b", idempotency_key="order-7", idempotency_ttl=60)
        assert broker.enqueue(first) == first.id
        assert broker.enqueue(second) == first.id
        assert drain(broker, ["q"]) == ["a"]

    def test_idempotency_key_expires(self, broker: Broker) -> None:
        broker.enqueue(env("a", idempotency_key="k", idempotency_ttl=0.3))
        time.sleep(0.5)  # the key's TTL itself is what is under test
        later = env("b", idempotency_key="k", idempotency_ttl=60)
        assert broker.enqueue(later) == later.id

    def test_same_message_id_is_not_stored_twice(self, broker: Broker) -> None:
        if not self.stores_an_id_once:
            pytest.skip("RabbitMQ cannot look a message id up; a retry written twice by a "
                        "crash is delivered twice (docs/decisions/0016-rabbitmq-broker.md)")
        e = Envelope(id="retry~1", queue="q", body=b"one")
        broker.enqueue(e)
        broker.enqueue(Envelope(id="retry~1", queue="q", body=b"two"))
        assert drain(broker, ["q"]) == ["one"]

    def test_concurrent_idempotent_producers_make_one_message(
            self, broker: Broker, url: str) -> None:
        ids: list[str] = []
        lock = threading.Lock()

        def produce() -> None:
            b = broker_from_url(url)
            got = b.enqueue(env("x", idempotency_key="once", idempotency_ttl=60))
            with lock:
                ids.append(got)

        threads = [threading.Thread(target=produce) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(ids)) == 1
        assert broker.stats(["q"])[0].ready == 1

    def test_consumers_in_several_processes_never_share_a_message(self, broker: Broker,
                                                                   url: str) -> None:
        self._needs_processes()
        ids = broker.enqueue_many([env(str(i)) for i in range(600)])
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        procs = [ctx.Process(target=_consume, args=(url, out)) for _ in range(4)]
        for p in procs:
            p.start()
        seen = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        flat = [i for part in seen for i in part]
        assert len(flat) == len(set(flat)) == 600
        assert set(flat) == set(ids)

    def test_leases_for_leader_election(self, broker: Broker) -> None:
        assert broker.acquire_lease("beat", "a", 0.5) is True
        assert broker.acquire_lease("beat", "b", 0.5) is False
        assert broker.lease_holder("beat") == "a"
        assert broker.acquire_lease("beat", "a", 0.5) is True  # renewal
        broker.release_lease("beat", "b")  # not the holder: no effect
        assert broker.lease_holder("beat") == "a"
        broker.release_lease("beat", "a")
        assert broker.lease_holder("beat") is None
        assert broker.acquire_lease("beat", "b", 0.3) is True
        deadline = time.monotonic() + 3
        while not broker.acquire_lease("beat", "c", 0.3):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert broker.lease_holder("beat") == "c"

    def test_revocations(self, broker: Broker) -> None:
        broker.revoke(["t1"], ttl=60)
        broker.revoke(["t2"], ttl=60, terminate=True)
        assert broker.revoked(["t1", "t2", "t3"]) == {"t1": False, "t2": True}

    def test_rate_slots_are_spaced_by_the_interval(self, broker: Broker) -> None:
        """A global rate limit's slots are ``interval`` apart whoever takes them; one
        asked for too early is not taken (so nobody holds a far-off slot hostage)."""
        t = [("t", 0.5)]
        assert broker.take_rate_slot(t, within=10) == 0.0  # a full bucket: now
        second = broker.take_rate_slot(t, within=10)
        third = broker.take_rate_slot(t, within=10)
        assert 0.4 <= second <= 0.5 and 0.9 <= third <= 1.0
        too_far = broker.take_rate_slot(t, within=0.2)  # 1.5 s away: not taken
        assert 1.4 <= too_far <= 1.5
        assert broker.take_rate_slot(t, within=10) == pytest.approx(too_far, abs=0.05)
        assert broker.take_rate_slot([("other", 0.5)], within=0) == 0.0  # names are separate

    def test_a_rate_slot_under_two_limits_waits_for_both(self, broker: Broker) -> None:
        """Taken under every name at once, at the latest of their next free slots."""
        broker.take_rate_slot([("task", 2.0)], within=10)  # task: next free in 2 s
        wait = broker.take_rate_slot([("task", 2.0), ("queue", 0.5)], within=10)
        assert 1.9 <= wait <= 2.0
        # The queue's next slot moved past the common one, by its own interval.
        assert 2.4 <= broker.take_rate_slot([("queue", 0.5)], within=10) <= 2.5
        # Too far for one name: nothing is taken under the other either.
        assert broker.take_rate_slot([("task", 2.0), ("fresh", 1.0)], within=1) > 1
        assert broker.take_rate_slot([("fresh", 1.0)], within=0) == 0.0

    def test_rate_slots_are_never_shared_across_processes(self, broker: Broker, url: str) -> None:
        self._needs_processes()
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(3) as pool:
            firsts = pool.starmap(_take_slots, [(url, 10)] * 3)
        # 30 one-second slots were taken; had two takers ever shared one, the next
        # free slot would be a second nearer than 30 s after the first take.
        wait = broker.take_rate_slot([("shared", 1.0)], within=60)
        since_first = time.time() - min(firsts)
        assert 30 - since_first - 0.05 <= wait <= 30.0
