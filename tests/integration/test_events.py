"""The worker side that feeds an event store (the stores themselves keep the contract in
tests/contract/event_store_contract.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, states
from conveyor._events import (
    BUCKETS,
    DEAD,
    FLUSH_AT_REPORTS,
    EventStore,
    Recorder,
    TaskClock,
    TaskReport,
    bucket_index,
    events_url,
    store_for,
)
from conveyor._message import Message
from conveyor.brokers.base import Delivery
from conveyor.testing import run_worker
from conveyor.worker.execute import ACK, Outcome
from conveyor.worker.execute import DEAD as DEAD_ACTION

from .processes import start_worker, stop, wait_for, worker_env

OWN_REDIS_DB = 13  # other suites flush the shared test database while these run


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


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def process_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite, a PostgreSQL schema of its own (broker, results and events in one
    database, no Redis), or a Redis database of its own: a worker process must not
    take other suites' messages from the shared test database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'broker.db'}"
        return
    if request.param == "postgres":
        yield str(request.getfixturevalue("pg_url"))
        return
    import redis

    own = str(request.getfixturevalue("redis_url")).rsplit("/", 1)[0] + f"/{OWN_REDIS_DB}"
    client = redis.Redis.from_url(own)
    client.flushdb()
    yield own
    client.flushdb()
    client.close()


def test_prefork_worker_feeds_the_store(process_url: str, tmp_path: Path) -> None:
    """Children report over the pipe; the supervisor aggregates and flushes; the
    app's own store (``store_for``, chosen from its result backend) shows it all."""
    env = worker_env(process_url, tmp_path / "ledger.txt", worker_heartbeat_interval=0.3)
    proc = start_worker(env, "-P", "prefork", "-c", "2", log=tmp_path / "worker.log")
    client = Conveyor("client", broker=process_url, set_as_current=False)
    try:
        results = [client.send_task("tests.integration.worker_app.work", (0.05,))
                   for _ in range(6)]
        for result in results:
            result.get(timeout=30)
        store = store_for(client)

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




def test_many_reports_are_written_before_the_next_heartbeat(memory_url: str) -> None:
    """FLUSH_AT_REPORTS: a busy worker writes its task events once that many are
    pending, so a heartbeat's worth never piles up in the supervisor's heap."""
    app = Conveyor("ev", broker=memory_url, worker_heartbeat_interval=3600)

    @app.task(name="ev.noop")
    def noop() -> None:
        return None

    # A start and a finish each; the first heartbeat (at start) may drain some.
    tasks = 2 * FLUSH_AT_REPORTS
    with run_worker(app, pool="threads", concurrency=2) as worker:
        app.send_many("ev.noop", [()] * tasks)
        worker.join()
        store = app.events
        assert isinstance(store, EventStore)

        def written() -> float:
            return sum(value for _, name, metric, value
                       in store.cells(time.time() - 300, time.time(), 60)
                       if name == "ev.noop" and metric == "n:SUCCESS")

        deadline = time.monotonic() + 10
        while written() < FLUSH_AT_REPORTS // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert written() >= FLUSH_AT_REPORTS // 2  # before any second heartbeat or goodbye
