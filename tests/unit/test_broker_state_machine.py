"""A stateful property test: each broker against a model of the queue.

Hypothesis drives random sequences of enqueue (with repeated ids and
idempotency keys), reserve, ack, requeue (counted or not, now or far
later), dead-letter, extend, lapse (a lease that runs out and moves on),
purge, replay and discard against the memory, SQLite and Redis brokers, and
after every step compares what the broker said with a model of the
contract in ``conveyor/brokers/base.py``:

* reserve hands out ready messages only, up to ``count``, by priority, then
  queue order, then first in first out (strictly for messages never handed
  back; a handed-back message may come back anywhere in its priority, as
  the contract leaves that to the broker);
* every reservation has a fresh token, and ``deliveries`` counts hand-outs
  (``requeue(count=False)`` gives one back);
* ack, requeue, dead-letter and extend succeed exactly while the token
  holds the lease, and a stale token changes nothing;
* an id already stored is not stored again, and an idempotency key keeps
  its first message's id;
* stats and dead letters match the model.

The one timed rule, ``lapse``, uses a 10 ms lease and waits 30 ms, so the run
stays fast and does not depend on the machine's speed.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from conveyor.brokers import Broker, Delivery, Envelope, broker_from_url

QUEUES = ("a", "b")
PRIORITIES = (0, 5, 9)
LONG = 600.0  # a lease or delay that never runs out during a run


@dataclass
class Msg:
    id: str
    queue: str
    priority: int
    body: bytes
    seq: int
    state: str = "ready"  # ready | delayed | leased
    deliveries: int = 0
    token: str | None = None
    pristine: bool = True  # never handed back: strict FIFO applies to it


@dataclass
class Model:
    messages: dict[str, Msg] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    dead: dict[str, list[tuple[str, str, int, bytes]]] = field(
        default_factory=lambda: {q: [] for q in QUEUES})
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def store(self, env: Envelope) -> str:
        if env.id in self.messages:
            return env.id
        if env.idempotency_key is not None:
            owner = self.keys.get(env.idempotency_key)
            if owner is not None:
                return owner
            self.keys[env.idempotency_key] = env.id
        state = "delayed" if env.eta is not None else "ready"
        self.messages[env.id] = Msg(env.id, env.queue, env.priority, env.body,
                                    next(self.seq), state)
        return env.id

    def holds(self, delivery: Delivery) -> Msg | None:
        msg = self.messages.get(delivery.id)
        if msg is None or msg.state != "leased" or msg.token != delivery.token:
            return None
        return msg

    def ready_in(self, queues: list[str]) -> list[Msg]:
        return [m for m in self.messages.values() if m.state == "ready" and m.queue in queues]


def check_choice(model: Model, queues: list[str], count: int, got: list[Delivery]) -> None:
    """``got`` is a choice the contract allows from the model's ready messages."""
    ready = {m.id: m for m in model.ready_in(queues)}
    ids = [d.id for d in got]
    assert len(ids) == len(set(ids)), f"one message handed out twice in a batch: {ids}"
    assert set(ids) <= set(ready), f"handed out what is not ready: {set(ids) - set(ready)}"
    assert len(ids) == min(count, len(ready)), (len(ids), count, len(ready))
    rank = {q: i for i, q in enumerate(queues)}
    keys = [(ready[i].priority, rank[ready[i].queue]) for i in ids]
    assert keys == sorted(keys), f"batch not in priority, then queue order: {keys}"
    left = [m for m in ready.values() if m.id not in set(ids)]
    if keys and left:
        worst = max(keys)
        assert all((m.priority, rank[m.queue]) >= worst for m in left), \
            "a more urgent message (or an earlier queue's) was left behind"
    for msg in (ready[i] for i in ids if ready[i].pristine):
        older = [m for m in left if m.pristine and m.queue == msg.queue
                 and m.priority == msg.priority and m.seq < msg.seq]
        assert not older, f"FIFO broken: {older[0].id} is older than {msg.id}"


class BrokerMachine(RuleBasedStateMachine):
    """One broker and its model; subclasses say which broker."""

    deliveries = Bundle("deliveries")
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.broker = self.open_broker()
        self.model = Model()
        self.tokens: set[str] = set()

    def open_broker(self) -> Broker:  # pragma: no cover - overridden
        raise NotImplementedError

    def teardown(self) -> None:
        self.broker.close()

    # -- producing ---------------------------------------------------------
    @initialize(target=ids)
    def first(self) -> str:
        env = Envelope("m0", "a", b"m0")
        assert self.broker.enqueue(env) == self.model.store(env)
        return env.id

    @rule(target=ids, queue=st.sampled_from(QUEUES), priority=st.sampled_from(PRIORITIES),
          key=st.sampled_from([None, None, "k1", "k2"]))
    def enqueue(self, queue: str, priority: int, key: str | None) -> str:
        mid = uuid.uuid4().hex[:12]
        env = Envelope(mid, queue, mid.encode(), priority, idempotency_key=key)
        expected = self.model.store(env)
        assert self.broker.enqueue(env) == expected
        return mid

    @rule(queue=st.sampled_from(QUEUES), size=st.integers(1, 4))
    def enqueue_many(self, queue: str, size: int) -> None:
        envs = [Envelope(uuid.uuid4().hex[:12], queue, b"batch", p)
                for p in itertools.islice(itertools.cycle(PRIORITIES), size)]
        expected = [self.model.store(e) for e in envs]
        assert self.broker.enqueue_many(envs) == expected

    @rule(mid=ids)
    def enqueue_again(self, mid: str) -> None:
        """The same id again (a retry written twice): stored once while it is stored."""
        msg = self.model.messages.get(mid)
        queue, priority = (msg.queue, msg.priority) if msg else ("a", 0)
        env = Envelope(mid, queue, mid.encode(), priority)
        expected = self.model.store(env)
        assert self.broker.enqueue(env) == expected

    @rule(queue=st.sampled_from(QUEUES))
    def enqueue_delayed(self, queue: str) -> None:
        mid = uuid.uuid4().hex[:12]
        env = Envelope(mid, queue, b"later", eta=time.time() + LONG)
        assert self.broker.enqueue(env) == self.model.store(env)

    # -- consuming ---------------------------------------------------------
    @rule(target=deliveries, queues=st.permutations(QUEUES).flatmap(
        lambda qs: st.integers(1, 2).map(lambda n: list(qs[:n]))), count=st.integers(1, 4))
    def reserve(self, queues: list[str], count: int) -> object:
        got = self.broker.reserve(queues, count, lease=LONG, timeout=0)
        self._took(queues, count, got)
        return multiple(*got)

    def _took(self, queues: list[str], count: int, got: list[Delivery]) -> None:
        check_choice(self.model, queues, count, got)
        for delivery in got:
            assert delivery.token not in self.tokens, "a token was handed out twice"
            self.tokens.add(delivery.token)
            msg = self.model.messages[delivery.id]
            msg.deliveries += 1
            msg.state, msg.token = "leased", delivery.token
            assert (delivery.deliveries, delivery.queue, delivery.body, delivery.priority) == (
                msg.deliveries, msg.queue, msg.body, msg.priority)

    @rule(target=deliveries, queue=st.sampled_from(QUEUES))
    def lapse(self, queue: str) -> object:
        """A lease runs out and the message moves on: the old token is stale from then on."""
        first = self.broker.reserve([queue], 1, lease=0.01, timeout=0)
        self._took([queue], 1, first)
        if not first:
            return multiple()
        time.sleep(0.03)
        msg = self.model.messages[first[0].id]
        msg.state, msg.token, msg.pristine = "ready", None, False
        again = self.broker.reserve([queue], 1, lease=LONG, timeout=0)
        self._took([queue], 1, again)
        return multiple(*first, *again)

    @rule(delivery=deliveries)
    def ack(self, delivery: Delivery) -> None:
        msg = self.model.holds(delivery)
        assert self.broker.ack([delivery]) == [msg is not None]
        if msg is not None:
            del self.model.messages[msg.id]

    @rule(delivery=deliveries, count=st.booleans(), later=st.booleans())
    def requeue(self, delivery: Delivery, count: bool, later: bool) -> None:
        msg = self.model.holds(delivery)
        assert self.broker.requeue(delivery, delay=LONG if later else 0, count=count) == (
            msg is not None)
        if msg is not None:
            msg.state, msg.token, msg.pristine = ("delayed" if later else "ready"), None, False
            msg.deliveries -= 0 if count else 1

    @rule(delivery=consumes(deliveries), reason=st.sampled_from(["boom", "bad input: ü"]))
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        msg = self.model.holds(delivery)
        assert self.broker.dead_letter(delivery, reason) == (msg is not None)
        if msg is not None:
            del self.model.messages[msg.id]
            letters = [d for d in self.model.dead[msg.queue] if d[0] != msg.id]  # one per id
            self.model.dead[msg.queue] = [*letters, (msg.id, reason, msg.priority, msg.body)]

    @rule(delivery=deliveries)
    def extend(self, delivery: Delivery) -> None:
        held = self.model.holds(delivery) is not None
        assert self.broker.extend([delivery], LONG) == [held]

    # -- repair --------------------------------------------------------------
    @rule(queue=st.sampled_from(QUEUES))
    def purge(self, queue: str) -> None:
        doomed = [m for m in self.model.messages.values()
                  if m.queue == queue and m.state in ("ready", "delayed")]
        assert self.broker.purge(queue) == len(doomed)
        for msg in doomed:
            del self.model.messages[msg.id]

    @rule(queue=st.sampled_from(QUEUES))
    def replay_dead(self, queue: str) -> None:
        letters = self.model.dead[queue]
        assert self.broker.replay_dead(queue) == len(letters)
        for mid, _, priority, body in letters:
            if mid not in self.model.messages:
                self.model.messages[mid] = Msg(mid, queue, priority, body, next(self.model.seq),
                                               pristine=False)
        self.model.dead[queue] = []

    @rule(queue=st.sampled_from(QUEUES))
    def discard_dead(self, queue: str) -> None:
        assert self.broker.discard_dead(queue) == len(self.model.dead[queue])
        self.model.dead[queue] = []

    # -- what must always hold -------------------------------------------------
    @invariant()
    def stats_match(self) -> None:
        for stats in self.broker.stats(list(QUEUES)):
            mine = [m for m in self.model.messages.values() if m.queue == stats.queue]
            expected = (sum(m.state == "ready" for m in mine),
                        sum(m.state == "delayed" for m in mine),
                        sum(m.state == "leased" for m in mine),
                        len(self.model.dead[stats.queue]))
            assert (stats.ready, stats.delayed, stats.inflight, stats.dead) == expected, stats

    @invariant()
    def dead_letters_match(self) -> None:
        for queue in QUEUES:
            letters = self.broker.dead_letters(queue, limit=1000)
            expected = [(mid, reason) for mid, reason, _, _ in reversed(self.model.dead[queue])]
            assert [(d.id, d.reason) for d in letters] == expected


MACHINE_SETTINGS = settings(max_examples=20, stateful_step_count=30, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])


def _run(machine: type[BrokerMachine]) -> None:
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


def test_memory_broker_against_the_model() -> None:
    class Memory(BrokerMachine):
        def open_broker(self) -> Broker:
            return broker_from_url(f"memory://machine-{uuid.uuid4().hex}")

    _run(Memory)


def test_sqlite_broker_against_the_model(tmp_path: Path) -> None:
    class SQLite(BrokerMachine):
        def open_broker(self) -> Broker:
            return broker_from_url(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db")

    _run(SQLite)


def test_redis_broker_against_the_model(redis_url: str) -> None:
    class Redis(BrokerMachine):
        def open_broker(self) -> Broker:
            # A prefix per run: other suites may share (and flush) the database.
            return broker_from_url(f"{redis_url}?prefix=machine-{uuid.uuid4().hex[:8]}")

    _run(Redis)
