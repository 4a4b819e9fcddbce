"""Event stores (memory, SQLite, Redis) and the worker side that feeds them."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, states
from conveyor.brokers.base import Delivery, QueueStats
from conveyor.events import (
    BUCKETS,
    DEAD,
    MAX_TIMELINE,
    Batch,
    EventStore,
    Recorder,
    TaskClock,
    TaskEntry,
    TaskQuery,
    TaskReport,
    TimelineEvent,
    bucket_index,
    events_url,
    minute_of,
    store_from_url,
)
from conveyor.message import Message
from conveyor.testing import run_worker
from conveyor.worker.execute import ACK, Outcome
from conveyor.worker.execute import DEAD as DEAD_ACTION

from .processes import start_worker, stop, wait_for, worker_env

OWN_REDIS_DB = 13  # other suites flush the shared test database while these run


@pytest.fixture
def store_url(backend_url: str) -> Iterator[str]:
    """The backend, with Redis keys of this test only, in a database of their own."""
    if not backend_url.startswith("redis"):
        yield backend_url
        return
    import redis

    url = backend_url.rsplit("/", 1)[0] + f"/{OWN_REDIS_DB}"
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield f"{url}#{prefix}"
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def open_store(url: str, retention: float) -> EventStore:
    base, _, prefix = url.partition("#")
    return store_from_url(base, retention=retention, options={"prefix": prefix or "conveyor"})


@pytest.fixture
def store(store_url: str) -> Iterator[EventStore]:
    opened = open_store(store_url, 3600)
    yield opened
    opened.close()


def entry(task_id: str, state: str, at: float, **fields: object) -> TaskEntry:
    return TaskEntry(task_id=task_id, name=str(fields.pop("name", "proj.add")), state=state,
                     queue=str(fields.pop("queue", "default")), updated_at=at,
                     done_at=at if state != states.STARTED else None, **fields)  # type: ignore[arg-type]


def test_heartbeats_list_workers_then_mark_them_offline(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def test_counters_add_up_across_writers_and_bucket_by_step(store: EventStore) -> None:
    minute = minute_of(time.time()) - 120
    store.write(Batch("w1", cells={(minute, "t", "n:SUCCESS"): 2, (minute, "t", "rt:sum"): 0.5}))
    store.write(Batch("w2", cells={(minute, "t", "n:SUCCESS"): 3,
                                   (minute + 60, "t", "n:FAILURE"): 1}))
    cells = store.cells(minute, minute + 60, 60)
    assert (minute, "t", "n:SUCCESS", 5.0) in cells
    assert (minute, "t", "rt:sum", 0.5) in cells
    assert (minute + 60, "t", "n:FAILURE", 1.0) in cells
    summed = {(t, m): v for t, _, m, v in store.cells(minute, minute + 60, 600)}
    assert sum(v for (_, m), v in summed.items() if m == "n:SUCCESS") == 5


def test_task_index_keeps_the_newest_state_and_searches(store: EventStore) -> None:
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


def test_a_retry_attempt_replaces_the_retried_outcome(store: EventStore) -> None:
    now = time.time()
    store.write(Batch("w", tasks=[entry("r", states.RETRY, now - 2)]))
    store.write(Batch("w", tasks=[entry("r", states.STARTED, now - 1, retries=1)]))
    found = store.task("r")
    assert found is not None and found.state == states.STARTED and found.retries == 1


def test_timeline_is_ordered_and_capped(store: EventStore) -> None:
    now = time.time()
    events = [TimelineEvent("t1", now + i, "RETRY", f"attempt {i}") for i in range(60)]
    store.write(Batch("w", tasks=[entry("t1", states.RETRY, now)], timeline=events[::-1]))
    store.add_events([TimelineEvent("t1", now + 100, "action", "revoked by admin")])
    timeline = store.timeline("t1")
    assert timeline == sorted(timeline, key=lambda e: e.ts)
    assert timeline[-1].detail == "revoked by admin"
    assert len(timeline) <= MAX_TIMELINE + 1


def test_claims_are_exclusive_until_they_expire(store: EventStore) -> None:
    assert store.claim("queues:1", ttl=1)
    assert not store.claim("queues:1", ttl=1)
    time.sleep(1.1)
    assert store.claim("queues:1", ttl=1)


def test_queue_samples_once_per_minute(store: EventStore) -> None:
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


def test_prune_applies_retention_and_the_index_cap(store_url: str) -> None:
    store = open_store(store_url, 600)
    store.max_tasks = 3  # type: ignore[attr-defined]
    now = time.time()
    old = minute_of(now) - 3600
    store.write(Batch("w", cells={(old, "t", "n:SUCCESS"): 1},
                      tasks=[entry(f"t{i}", states.SUCCESS, now - 10 + i) for i in range(5)]
                      + [entry("ancient", states.SUCCESS, now - 5000)]))
    store.prune(now + 61)
    kept = {e.task_id for e in store.tasks(TaskQuery())}
    assert kept == {"t2", "t3", "t4"}
    if not store_url.startswith("redis"):  # Redis counters expire by themselves
        assert store.cells(old, old, 60) == []
    store.close()


# -- the worker side -----------------------------------------------------------
def test_bucket_bounds() -> None:
    assert bucket_index(0) == 0
    assert bucket_index(BUCKETS[0]) == 0
    assert bucket_index(0.3) == BUCKETS.index(0.5)
    assert bucket_index(10_000) == len(BUCKETS)


def _delivery(message: Message, queue: str = "default") -> Delivery:
    return Delivery(id=message.id, queue=queue, body=message.encode(), deliveries=1, token="t")


def test_clock_measures_wait_and_runtime_and_recorder_aggregates() -> None:
    message = Message(id="m1", task="proj.add", created=time.time() - 2.0)
    delivery = _delivery(message)
    clock, recorder = TaskClock(), Recorder()
    start = clock.start(delivery, "proj.add")
    assert start.wait is not None and 1.9 < start.wait < 3
    recorder.add(start)
    done = clock.finish(delivery, Outcome(ACK, state=states.SUCCESS, runtime=0.3))
    assert done is not None and done.runtime == 0.3
    recorder.add(done)
    batch = recorder.drain("w1")
    [task] = batch.tasks
    assert (task.state, task.worker, task.runtime) == (states.SUCCESS, "w1", 0.3)
    metrics = {m: v for (_, name, m), v in batch.cells.items() if name == "proj.add"}
    assert metrics["n:SUCCESS"] == 1
    assert metrics[f"rt:{bucket_index(0.3)}"] == 1 and metrics["rt:sum"] == 0.3
    assert [e.kind for e in batch.timeline] == ["SENT", "STARTED", "SUCCESS"]
    assert not recorder.drain("w1")


def test_dead_letters_and_refusals_are_counted_without_a_start() -> None:
    clock, recorder = TaskClock(), Recorder()
    message = Message(id="m2", task="proj.boom")
    report = clock.finish(_delivery(message), Outcome(DEAD_ACTION, reason="undecodable"))
    assert report is not None and report.state == DEAD and report.name == "proj.boom"
    recorder.add(report)
    assert clock.finish(_delivery(message), Outcome(ACK)) is None  # ignored: not counted
    batch = recorder.drain("w")
    assert any(m == f"n:{DEAD}" for (_, _, m) in batch.cells)


def test_failed_flush_is_restored() -> None:
    recorder = Recorder()
    recorder.add(TaskReport("x", "t", "q", states.SUCCESS, time.time(), runtime=0.1))
    batch = recorder.drain("w")
    recorder.restore(batch)
    again = recorder.drain("w")
    assert again.cells == batch.cells and [e.task_id for e in again.tasks] == ["x"]


def test_django_db_results_fall_back_to_the_broker_url(memory_url: str) -> None:
    app = Conveyor("ev", broker=memory_url, backend="django-db")
    assert events_url(app) == memory_url


def test_worker_writes_heartbeats_counters_and_the_index(sqlite_url: str) -> None:
    pool = "threads"
    app = Conveyor("ev", broker=sqlite_url, worker_heartbeat_interval=0.2)

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def boom() -> None:
        raise ValueError("boom")

    with run_worker(app, pool=pool, concurrency=2) as worker:
        ok = [add.delay(i, i) for i in range(5)]
        bad = boom.delay()
        for result in ok:
            assert result.get(timeout=20) in range(0, 10, 2)
        bad.get(timeout=20, propagate=False)
        worker.join()
        deadline = time.monotonic() + 10
        store = app.events
        assert isinstance(store, EventStore)
        while time.monotonic() < deadline:
            found = store.task(bad.id)
            if found is not None and found.state == states.FAILURE:
                break
            time.sleep(0.1)
        workers = store.workers()
    assert [w["online"] for w in workers] == [True]
    assert workers[0]["pool"] == pool and workers[0]["memory_kib"] > 0
    totals: dict[str, float] = {}
    for _, name, metric, value in store.cells(time.time() - 300, time.time(), 60):
        if metric.startswith("n:"):
            key = f"{name.rsplit('.', 1)[-1]}:{metric}"
            totals[key] = totals.get(key, 0) + value
    assert totals["add:n:SUCCESS"] == 5 and totals["boom:n:FAILURE"] == 1
    detail = store.task(bad.id)
    assert detail is not None and detail.state == states.FAILURE and detail.worker
    kinds = [e.kind for e in store.timeline(bad.id)]
    assert kinds[:3] == ["SENT", "STARTED", "FAILURE"]
    assert store.queue_samples(time.time() - 120, time.time() + 60)
    assert [w["online"] for w in store.workers()] == [False]  # said goodbye


@pytest.fixture(params=["sqlite", "redis"])
def process_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite, or a Redis database of its own: a worker process must not take
    other suites' messages from the shared test database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'broker.db'}"
        return
    import redis

    own = str(request.getfixturevalue("redis_url")).rsplit("/", 1)[0] + f"/{OWN_REDIS_DB}"
    client = redis.Redis.from_url(own)
    client.flushdb()
    yield own
    client.flushdb()
    client.close()


def test_prefork_worker_feeds_the_store(process_url: str, tmp_path: Path) -> None:
    """Children report over the pipe; the supervisor aggregates and flushes."""
    env = worker_env(process_url, tmp_path / "ledger.txt", worker_heartbeat_interval=0.3)
    proc = start_worker(env, "-P", "prefork", "-c", "2", log=tmp_path / "worker.log")
    client = Conveyor("client", broker=process_url, set_as_current=False)
    try:
        results = [client.send_task("tests.integration.worker_app.work", (0.05,))
                   for _ in range(6)]
        for result in results:
            result.get(timeout=30)
        store = store_from_url(process_url)

        def all_indexed() -> bool:
            found = [store.task(r.id) for r in results]
            return all(f is not None and f.state == states.SUCCESS for f in found)

        wait_for(all_indexed, 15, "the index to show every task")
        def own() -> list[dict[str, object]]:  # Redis may be shared with other suites
            return [w for w in store.workers() if w["pid"] == proc.pid]

        wait_for(own, 10, "its heartbeat")
        [worker] = own()
        assert worker["online"] and worker["pool"] == "prefork" and worker["processed"] >= 6
        entry = store.task(results[0].id)
        assert entry is not None and entry.runtime is not None and entry.runtime >= 0.05
        assert entry.wait is not None and entry.worker == worker["id"]
    finally:
        stop(proc)
        client.close()
    assert [w["online"] for w in store.workers() if w["pid"] == proc.pid] == [False]


def test_totals_are_kept_beyond_the_retention(store_url: str) -> None:
    store = open_store(store_url, 600)
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
