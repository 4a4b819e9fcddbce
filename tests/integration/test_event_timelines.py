"""Task timelines across heartbeats and writers, and the cheap event paths (finding 3)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor import states
from conveyor._events import (
    Batch,
    EventStore,
    TaskClock,
    TaskEntry,
    TaskQuery,
    TimelineEvent,
    minute_of,
    store_from_url,
)
from conveyor._message import Message
from conveyor.brokers.base import Delivery
from conveyor.eventstores.redis import RedisEventStore


def _delivery(message: Message) -> Delivery:
    return Delivery(id=message.id, queue="default", body=message.encode(), deliveries=1,
                    token="t")


def test_clock_uses_the_decoded_message_instead_of_the_body() -> None:
    message = Message(id="m", task="proj.add", created=time.time() - 3.0, retries=2)
    garbled = Delivery(id="m", queue="default", body=b"not json", deliveries=1, token="t")
    report = TaskClock().start(garbled, "proj.add", message=message)
    assert report.sent_at == message.created and report.retries == 2
    assert report.wait is not None and 2.9 < report.wait < 4
    peeked = TaskClock().start(_delivery(message), "proj.add")
    assert (peeked.sent_at, peeked.retries) == (report.sent_at, report.retries)


def test_entries_round_trip_through_their_dicts() -> None:
    entry = TaskEntry("t", "proj.add", states.SUCCESS, queue="q", worker="w", retries=1,
                      sent_at=1.0, started_at=2.0, done_at=3.0, runtime=1.0, wait=1.0,
                      info="ok", updated_at=3.0)
    assert TaskEntry.from_json(entry.to_json()) == entry
    event = TimelineEvent("t", 1.5, "SENT", "sent", "w")
    assert TimelineEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event


# -- Redis only: compare-and-set against a concurrent writer, and the old layout ----------
# (the event store contract itself: tests/contract/event_store_contract.py)
@pytest.fixture
def store_url(prefixed: str) -> str:
    """The test Redis database, under a key prefix of this test's own."""
    return prefixed


def open_store(url: str, retention: float) -> EventStore:
    return store_from_url(url, retention=retention)


@pytest.fixture
def redis_store(store_url: str) -> Iterator[RedisEventStore]:
    opened = open_store(store_url, 3600)
    assert isinstance(opened, RedisEventStore)
    yield opened
    opened.close()


def entry(task_id: str, state: str, at: float, retries: int = 0) -> TaskEntry:
    return TaskEntry(task_id, "proj.add", state, queue="default", retries=retries,
                     done_at=None if state == states.STARTED else at, updated_at=at)


def after_each_read(monkeypatch: pytest.MonkeyPatch, store: RedisEventStore,
                    act: Callable[[int], None]) -> list[int]:
    """Run ``act(n)`` after the store's n-th HMGET of index entries, before it writes
    (another writer racing it, or the connection failing); the reads made so far."""
    real_hmget = store.client.hmget
    reads: list[int] = []

    def hmget(*args: Any, **kwargs: Any) -> Any:
        stored = real_hmget(*args, **kwargs)
        reads.append(1)
        act(len(reads))
        return stored

    monkeypatch.setattr(store.client, "hmget", hmget)
    return reads


def test_a_writer_racing_another_merges_again_and_loses_nothing(
    redis_store: RedisEventStore, store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = open_store(store_url, 3600)
    now = time.time()

    def race(read: int) -> None:  # another worker writes the same task meanwhile
        if read == 1:
            other.write(Batch("w2", tasks=[entry("x", states.RETRY, now)],
                              timeline=[TimelineEvent("x", now, "RETRY", "", "w2")]))

    reads = after_each_read(monkeypatch, redis_store, race)
    redis_store.write(Batch("w1", tasks=[entry("x", states.STARTED, now + 1, retries=1)],
                            timeline=[TimelineEvent("x", now + 1, "STARTED", "", "w1")]))
    other.close()
    assert len(reads) == 2  # read, conflict, read again
    assert [(e.kind, e.worker) for e in redis_store.timeline("x")] == [
        ("RETRY", "w2"), ("STARTED", "w1")]
    found = redis_store.task("x")
    assert found is not None and (found.state, found.retries) == (states.STARTED, 1)


def test_timelines_in_the_previous_layout_are_still_read(redis_store: RedisEventStore) -> None:
    now = time.time()
    old = entry("legacy", states.SUCCESS, now)
    redis_store.client.hset(f"{redis_store.p}:task", "legacy", old.to_json())
    redis_store.client.zadd(f"{redis_store.p}:tasks", {"legacy": now})
    redis_store.client.rpush(f"{redis_store.p}:tl:legacy", json.dumps(
        TimelineEvent("legacy", now - 1, "STARTED", "", "w").to_dict()))
    redis_store.write(Batch("w", tasks=[entry("legacy", states.SUCCESS, now + 1)],
                            timeline=[TimelineEvent("legacy", now + 1, "ACTION", "", "w")]))
    assert [e.kind for e in redis_store.timeline("legacy")] == ["STARTED", "ACTION"]
    assert redis_store.task("legacy") is not None
    only_old = entry("only-old", states.FAILURE, now - 5)
    redis_store.client.hset(f"{redis_store.p}:task", "only-old", only_old.to_json())
    redis_store.client.zadd(f"{redis_store.p}:tasks", {"only-old": now - 5})
    assert [e.task_id for e in redis_store.tasks(TaskQuery())] == ["legacy", "only-old"]
    assert redis_store.task("only-old") == only_old


def test_an_unreadable_entry_is_replaced_not_fatal(redis_store: RedisEventStore) -> None:
    now = time.time()
    redis_store.client.hset(f"{redis_store.p}:entry", "bad", b"[9, 1]")
    redis_store.client.zadd(f"{redis_store.p}:tasks", {"bad": now})
    assert redis_store.tasks(TaskQuery()) == []
    redis_store.write(Batch("w", tasks=[entry("bad", states.SUCCESS, now + 1)]))
    found = redis_store.task("bad")
    assert found is not None and found.state == states.SUCCESS


def test_the_url_prefix_names_the_keys_as_for_the_broker(redis_store: RedisEventStore,
                                                         store_url: str) -> None:
    import redis

    base = store_url.partition("?")[0]
    prefix = f"evtest-{time.time_ns()}"
    opened = store_from_url(f"{base}?prefix={prefix}")
    try:
        opened.write(Batch("w", tasks=[entry("p", states.SUCCESS, time.time())]))
        client = redis.Redis.from_url(base)
        keys = list(client.scan_iter(f"{prefix}:ev:*"))
        assert {k.decode() for k in keys} >= {f"{prefix}:ev:entry", f"{prefix}:ev:tasks"}
        client.delete(*keys)
        client.close()
    finally:
        opened.close()




def test_large_batches_go_in_several_script_calls_and_conflicts_come_back_from_any(
    redis_store: RedisEventStore, store_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("conveyor.eventstores.redis.UPSERT_CHUNK", 2)
    other = open_store(store_url, 3600)
    now = time.time()

    def race(read: int) -> None:  # a task of the first of three calls changes
        if read == 1:
            other.write(Batch("w2", tasks=[entry("t0", states.RETRY, now)],
                              timeline=[TimelineEvent("t0", now, "RETRY", "", "w2")]))

    after_each_read(monkeypatch, redis_store, race)
    ids = [f"t{i}" for i in range(5)]
    redis_store.write(Batch("w1", tasks=[entry(t, states.STARTED, now + 1, 1) for t in ids],
                            timeline=[TimelineEvent(t, now + 1, "STARTED", "", "w1")
                                      for t in ids]))
    other.close()
    assert all(redis_store.task(t) is not None for t in ids)
    assert [e.kind for e in redis_store.timeline("t0")] == ["RETRY", "STARTED"]


def test_heartbeats_measure_memory_at_most_every_few_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor import Conveyor
    from conveyor.worker import main

    calls: list[int] = []

    def measured() -> int:
        calls.append(1)
        return 1234

    monkeypatch.setattr(main, "_memory_kib", measured)
    worker = main.Worker(Conveyor("mem", broker="memory://", set_as_current=False),
                         pool="threads", concurrency=1)
    assert [worker._memory_kib() for _ in range(3)] == [1234] * 3
    assert len(calls) == 1  # one process scan for three heartbeats
    worker._memory = (time.monotonic() - main.MEMORY_EVERY, 1234)
    worker._memory_kib()
    assert len(calls) == 2


def test_a_failed_retry_round_does_not_hand_back_counters_already_written(
    redis_store: RedisEventStore, store_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    other = open_store(store_url, 3600)
    now = time.time()

    def race_then_fail(read: int) -> None:
        if read == 2:
            raise redis.ConnectionError("connection lost")
        other.write(Batch("w2", tasks=[entry("c", states.RETRY, now)]))

    reads = after_each_read(monkeypatch, redis_store, race_then_fail)
    minute = minute_of(now)
    redis_store.write(Batch("w1", cells={(minute, "proj.add", "n:SUCCESS"): 1},
                            tasks=[entry("c", states.SUCCESS, now + 1)]))  # does not raise
    other.close()
    assert len(reads) == 2
    assert ("proj.add", "n:SUCCESS", 1.0) in [
        (task, metric, value) for _, task, metric, value in redis_store.cells(minute, minute, 60)]
