"""The event store contract (``EventStore`` in conveyor/_events.py): ``EventStoreContract``.

What the monitor reads, written by workers (ADR 0006): heartbeats, counters, the
task index and timelines, claims, queue samples, retention. Not collected on its
own; each store's module (``tests/contract/test_event_store_<backend>.py``)
subclasses it and overrides the one hook, the ``url`` fixture. The worker side
that feeds a store stays in tests/integration/test_events.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from conveyor import states
from conveyor._events import (
    MAX_TIMELINE,
    Batch,
    EventStore,
    Recorder,
    TaskClock,
    TaskEntry,
    TaskQuery,
    TaskReport,
    TimelineEvent,
    minute_of,
    store_from_url,
)
from conveyor._message import Message
from conveyor.brokers.base import Delivery, QueueStats
from conveyor.worker.execute import ACK, Outcome


def open_store(url: str, retention: float) -> EventStore:
    return store_from_url(url, retention=retention)


def entry(task_id: str, state: str, at: float, **fields: object) -> TaskEntry:
    return TaskEntry(task_id=task_id, name=str(fields.pop("name", "proj.add")), state=state,
                     queue=str(fields.pop("queue", "default")), updated_at=at,
                     done_at=at if state != states.STARTED else None, **fields)  # type: ignore[arg-type]


def _delivery(message: Message) -> Delivery:
    return Delivery(id=message.id, queue="default", body=message.encode(), deliveries=1,
                    token="t")


def _run(recorder: Recorder, message: Message, state: str, runtime: float) -> None:
    clock, delivery = TaskClock(), _delivery(message)
    recorder.add(clock.start(delivery, message.task))
    report = clock.finish(delivery, Outcome(ACK, state=state, runtime=runtime))
    assert report is not None
    recorder.add(report)


class EventStoreContract:
    """The event store's rules; a store's test class subclasses this and overrides
    the ``url`` fixture."""

    #: Old counters leave by a TTL of their own, not by ``prune`` (Redis).
    counters_expire_by_themselves: ClassVar[bool] = False

    @pytest.fixture
    def url(self) -> str:
        """The one hook: a URL ``store_from_url`` opens, empty for this test."""
        raise NotImplementedError(f"{type(self).__name__} must override the url fixture")

    @pytest.fixture
    def store(self, url: str) -> Iterator[EventStore]:
        opened = open_store(url, 3600)
        yield opened
        opened.close()

    def test_heartbeats_list_workers_then_mark_them_offline(
            self, store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
        store.worker_heartbeat({"id": "w2", "hostname": "h", "heartbeat_at": time.time()}, ttl=0.3)
        time.sleep(0.6)
        for worker in ("w1", "w3"):
            store.worker_heartbeat({"id": worker, "hostname": "h", "heartbeat_at": time.time()},
                                   ttl=10)
        store.worker_offline("w1")
        listed = {w["id"]: w for w in store.workers()}
        assert listed["w1"]["online"] is False and "offline_at" in listed["w1"]  # said goodbye
        assert listed["w2"]["online"] is False  # its heartbeat is older than its ttl
        assert listed["w3"]["online"] is True
        monkeypatch.setattr(sys.modules[type(store).__module__], "WORKER_DROP_AFTER", 0.5)
        assert {w["id"] for w in store.workers()} == {"w1", "w3"}  # w2 is past the drop time
        store.worker_heartbeat({"id": "w2", "hostname": "h", "heartbeat_at": time.time()}, ttl=10)
        assert {w["id"]: w["online"] for w in store.workers()}["w2"] is True

    def test_counters_add_up_across_writers_and_bucket_by_step(self, store: EventStore) -> None:
        minute = minute_of(time.time()) - 120
        store.write(Batch("w1", cells={(minute, "t", "n:SUCCESS"): 2,
                                       (minute, "t", "rt:sum"): 0.5}))
        store.write(Batch("w2", cells={(minute, "t", "n:SUCCESS"): 3,
                                       (minute + 60, "t", "n:FAILURE"): 1}))
        cells = store.cells(minute, minute + 60, 60)
        assert (minute, "t", "n:SUCCESS", 5.0) in cells
        assert (minute, "t", "rt:sum", 0.5) in cells
        assert (minute + 60, "t", "n:FAILURE", 1.0) in cells
        summed = {(t, m): v for t, _, m, v in store.cells(minute, minute + 60, 600)}
        assert sum(v for (_, m), v in summed.items() if m == "n:SUCCESS") == 5

    def test_task_index_keeps_the_newest_state_and_searches(self, store: EventStore) -> None:
        now = time.time()
        store.write(Batch("w", tasks=[entry("a1", states.STARTED, now - 5),
                                      entry("b2", states.FAILURE, now - 4, name="proj.mul",
                                            queue="slow")]))
        store.write(Batch("w", tasks=[entry("a1", states.SUCCESS, now - 3, runtime=0.2)]))
        # A late STARTED for the same attempt must not hide the outcome.
        store.write(Batch("w", tasks=[entry("a1", states.STARTED, now - 2)]))
        found = store.task("a1")
        assert found is not None and found.state == states.SUCCESS and found.runtime == 0.2
        assert [e.task_id for e in store.tasks(TaskQuery())] == ["a1", "b2"]
        assert [e.task_id for e in store.tasks(TaskQuery(name="MUL"))] == ["b2"]
        assert [e.task_id for e in store.tasks(TaskQuery(state="FAILURE"))] == ["b2"]
        assert [e.task_id for e in store.tasks(TaskQuery(queue="slow"))] == ["b2"]
        assert [e.task_id for e in store.tasks(TaskQuery(task_id="a"))] == ["a1"]
        assert store.tasks(TaskQuery(since=now - 3.5)) == [store.task("a1")]
        assert store.tasks(TaskQuery(name="100%_")) == []  # wildcards are literal

    def test_a_retry_attempt_replaces_the_retried_outcome(self, store: EventStore) -> None:
        now = time.time()
        store.write(Batch("w", tasks=[entry("r", states.RETRY, now - 2)]))
        store.write(Batch("w", tasks=[entry("r", states.STARTED, now - 1, retries=1)]))
        found = store.task("r")
        assert found is not None and found.state == states.STARTED and found.retries == 1

    def test_timeline_is_ordered_and_capped(self, store: EventStore) -> None:
        now = time.time()
        events = [TimelineEvent("t1", now + i, "RETRY", f"attempt {i}") for i in range(60)]
        store.write(Batch("w", tasks=[entry("t1", states.RETRY, now)], timeline=events[::-1]))
        store.add_events([TimelineEvent("t1", now + 100, "action", "revoked by admin")])
        timeline = store.timeline("t1")
        assert timeline == sorted(timeline, key=lambda e: e.ts)
        assert timeline[-1].detail == "revoked by admin"
        assert len(timeline) <= MAX_TIMELINE + 1

    def test_claims_are_exclusive_until_they_expire(self, store: EventStore) -> None:
        assert store.claim("queues:1", ttl=1)
        assert not store.claim("queues:1", ttl=1)
        time.sleep(1.1)
        assert store.claim("queues:1", ttl=1)

    def test_queue_samples_once_per_minute(self, store: EventStore) -> None:
        class Broker:
            calls = 0

            def stats(self) -> list[QueueStats]:
                Broker.calls += 1
                return [QueueStats("default", 3, 1, 2, 4)]

        class Empty:
            def stats(self) -> list[QueueStats]:
                return []

        store.sample_queues(Empty())  # type: ignore[arg-type]  # nothing to sample: no claim
        broker = Broker()
        store.sample_queues(broker)  # type: ignore[arg-type]
        store.sample_queues(broker)  # type: ignore[arg-type]
        assert Broker.calls == 1
        [sample] = store.queue_samples(time.time() - 120, time.time())
        assert (sample.queue, sample.ready, sample.delayed, sample.inflight, sample.dead) == (
            "default", 3, 1, 2, 4)

    def test_prune_applies_retention_and_the_index_cap(self, url: str) -> None:
        store = open_store(url, 600)
        store.max_tasks = 3  # type: ignore[attr-defined]
        now = time.time()
        old = minute_of(now) - 3600
        store.write(Batch("w", cells={(old, "t", "n:SUCCESS"): 1},
                          tasks=[entry(f"t{i}", states.SUCCESS, now - 10 + i) for i in range(5)]
                          + [entry("ancient", states.SUCCESS, now - 5000)]))
        store.prune(now + 61)
        kept = {e.task_id for e in store.tasks(TaskQuery())}
        assert kept == {"t2", "t3", "t4"}
        if not self.counters_expire_by_themselves:
            assert store.cells(old, old, 60) == []
        store.close()

    def test_totals_are_kept_beyond_the_retention(self, url: str) -> None:
        store = open_store(url, 600)
        recorder = Recorder()
        old = time.time() - 3600
        recorder.add(TaskReport("a", "proj.t", "q", states.SUCCESS, old, runtime=0.2, wait=0.01))
        recorder.add(TaskReport("b", "proj.t", "q", states.FAILURE, time.time(), runtime=0.3))
        store.write(recorder.drain("w"))
        store.prune(time.time() + 61)
        totals = {(task, metric): v for task, metric, v in store.totals()}
        assert totals[("proj.t", "n:SUCCESS")] == 1 and totals[("proj.t", "n:FAILURE")] == 1
        assert totals[("proj.t", "rt:sum")] == pytest.approx(0.5)
        recent = store.cells(time.time() - 300, time.time(), 60)
        assert {m for _, _, m, _ in recent if m.startswith("n:")} == {"n:FAILURE"}
        store.close()

    def test_a_task_started_and_finished_in_different_heartbeats_has_one_timeline(
            self, store: EventStore) -> None:
        message = Message(id="split", task="proj.add", created=time.time() - 1.0)
        clock, delivery, recorder = TaskClock(), _delivery(message), Recorder()
        recorder.add(clock.start(delivery, "proj.add"))
        store.write(recorder.drain("w1"))
        report = clock.finish(delivery, Outcome(ACK, state=states.SUCCESS, runtime=0.25))
        assert report is not None
        recorder.add(report)
        store.write(recorder.drain("w1"))
        assert [e.kind for e in store.timeline("split")] == ["SENT", "STARTED", "SUCCESS"]
        found = store.task("split")
        assert found is not None and (found.state, found.runtime) == (states.SUCCESS, 0.25)

    def test_retries_keep_every_attempt_and_actions_in_the_timeline(
            self, store: EventStore) -> None:
        first = Message(id="again", task="proj.flaky", created=time.time() - 2.0)
        recorder = Recorder()
        _run(recorder, first, states.RETRY, 0.1)
        store.write(recorder.drain("w1"))
        _run(recorder, first.evolve(retries=1, created=time.time()), states.SUCCESS, 0.2)
        store.add_events([TimelineEvent("again", time.time() + 1, "ACTION", "noted by ops")])
        store.write(recorder.drain("w2"))
        kinds = [e.kind for e in store.timeline("again")]
        assert kinds == ["SENT", "STARTED", "RETRY", "SENT", "STARTED", "SUCCESS", "ACTION"]
        found = store.task("again")
        assert found is not None and (found.state, found.retries, found.worker) == (
            states.SUCCESS, 1, "w2")

    def test_a_settled_minute_is_not_claimed_again(self, store: EventStore, url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        class Broker:
            def stats(self) -> list[QueueStats]:
                return [QueueStats("default", 1, 0, 0, 0)]

        other = open_store(url, 3600)
        claims: list[str] = []
        real_claim = other.claim

        def counted(name: str, ttl: float) -> bool:
            claims.append(name)
            return real_claim(name, ttl)

        monkeypatch.setattr(other, "claim", counted)
        minute = minute_of(time.time())
        monkeypatch.setattr(time, "time", lambda: minute + 1.0)  # the same clock for both
        store.sample_queues(Broker())  # type: ignore[arg-type]  # this one samples the minute
        for _ in range(3):  # heartbeats of another worker in the same minute
            other.sample_queues(Broker())  # type: ignore[arg-type]
        other.close()
        assert claims == [f"queues:{minute}"]  # asked once, then known to be taken
