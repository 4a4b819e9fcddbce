"""How the Redis result store wakes waiters: the per-task notify list.

``RedisResultStore.wait`` reads the result, then blocks on
``P:result-notify:{id}`` with ``BRPOPLPUSH`` (see the module docstring of
``conveyor.resultstores.redis``).  These tests try to break what that design must
keep: every waiter wakes, a write between the read and the block is not
missed, only an accepted (fenced) write wakes anyone, a stale value is never
announced, the list does not linger, and nothing is left running or held.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import conveyor.resultstores.redis as results_redis
from conveyor import states
from conveyor.resultstores.record import Attempt
from conveyor.resultstores.redis import RedisResultStore

pytestmark = pytest.mark.redis


@pytest.fixture
def store(prefixed: str) -> Iterator[RedisResultStore]:
    s = RedisResultStore(prefixed)
    yield s
    s.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _blocked_waiters(raw: redis.Redis) -> int:
    """Clients of this test database blocked in a result wait."""
    db = raw.connection_pool.connection_kwargs.get("db", 0)
    return sum(1 for c in raw.client_list()
               if c.get("cmd") == "brpoplpush" and int(c.get("db", -1)) == db)


def _wait_in_child(prefixed: str, task_id: str, out: Any) -> None:
    s = RedisResultStore(prefixed)
    got = s.wait(task_id, timeout=10)
    out.put(None if got is None else (got.state, got.payload))
    s.close()


def test_one_write_wakes_every_waiter_in_every_process(store: RedisResultStore, prefixed: str,
                                                       raw: redis.Redis) -> None:
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(store.wait("many", timeout=10)))
               for _ in range(4)]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_wait_in_child, args=(prefixed, "many", out)) for _ in range(2)]
    for t in threads:
        t.start()
    for p in procs:
        p.start()
    deadline = time.monotonic() + 10
    while _blocked_waiters(raw) < 6:  # all six are blocked on the list
        assert time.monotonic() < deadline, "waiters never blocked"
        time.sleep(0.01)
    RedisResultStore(prefixed).set("many", states.SUCCESS, b"v", 60)
    for t in threads:
        t.join(10)
    children = [out.get(timeout=10) for _ in procs]
    for p in procs:
        p.join(10)
    assert [(g.state, g.payload) for g in got] == [(states.SUCCESS, b"v")] * 4
    assert children == [(states.SUCCESS, b"v")] * 2


def test_a_write_between_the_read_and_the_block_is_not_missed(
        store: RedisResultStore, redis_prefix: str, raw: redis.Redis) -> None:
    """The read found nothing and the write came before the block: only the
    notify list (left by the write) can tell the waiter."""
    raw.rpush(f"{redis_prefix}:result-notify:late", b"SUCCESS\nv")
    start = time.monotonic()
    got = store.wait("late", timeout=10)
    assert got is not None and got.payload == b"v"
    assert time.monotonic() - start < 0.5  # from the notify list, not a slice timeout


def test_a_waiter_that_missed_the_list_finds_the_result_after_one_slice(
        prefixed: str, redis_prefix: str, raw: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results_redis, "_BLOCK_SLICE", 0.2)
    store = RedisResultStore(prefixed)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(store.wait("quiet", timeout=10)))
    t.start()
    time.sleep(0.05)
    raw.set(f"{redis_prefix}:result:quiet", b"SUCCESS\nv", px=60_000)  # no notify list at all
    t.join(5)
    assert got and got[0] is not None and got[0].payload == b"v"
    store.close()


def test_a_refused_fenced_write_wakes_nobody(store: RedisResultStore, redis_prefix: str,
                                             raw: redis.Redis) -> None:
    newer, stale = Attempt(100, 0, 2), Attempt(100, 0, 1)
    assert store.set_fenced("f", states.STARTED, b'{"attempt":[100,0,2]}', 60, newer)
    assert not store.set_fenced("f", states.SUCCESS, b'{"attempt":[100,0,1]}', 60, stale)
    assert raw.exists(f"{redis_prefix}:result-notify:f") == 0
    got = store.wait("f", timeout=0.3)
    assert got is not None and got.state == states.STARTED
    assert store.set_fenced("f", states.SUCCESS, b'{"attempt":[100,0,2]}', 60, newer)
    assert raw.lrange(f"{redis_prefix}:result-notify:f", 0, -1) == [
        b'SUCCESS\n{"attempt":[100,0,2]}']


def test_a_state_that_is_not_ready_clears_an_earlier_announcement(
        store: RedisResultStore, redis_prefix: str, raw: redis.Redis) -> None:
    """A task id sent again: its waiter must not get the previous send's value."""
    store.set("again", states.SUCCESS, b"old", 60)
    store.set("again", states.STARTED, b"new run", 60)
    assert raw.exists(f"{redis_prefix}:result-notify:again") == 0
    got = store.wait("again", timeout=0.3)
    assert got is not None and got.state == states.STARTED
    store.set_many([("again", states.SUCCESS, b"x"), ("again", states.RETRY, b"y")], 60)
    assert raw.exists(f"{redis_prefix}:result-notify:again") == 0


def test_the_notify_list_is_short_lived_and_forgotten_with_the_result(
        store: RedisResultStore, redis_prefix: str, raw: redis.Redis) -> None:
    store.set("n", states.SUCCESS, b"v", 3600)
    notify = f"{redis_prefix}:result-notify:n"
    assert 0 < raw.pttl(notify) <= results_redis._NOTIFY_TTL_MS
    assert raw.llen(notify) == 1
    store.set("n", states.FAILURE, b"w", 3600)  # a rewrite replaces, never appends
    assert raw.lrange(notify, 0, -1) == [b"FAILURE\nw"]
    store.set("short", states.SUCCESS, b"v", 0.5)  # never outlives its result
    assert 0 < raw.pttl(f"{redis_prefix}:result-notify:short") <= 500
    store.forget(["n"])
    assert raw.exists(notify, f"{redis_prefix}:result:n") == 0
    assert store.wait("n", timeout=0.2) is None


def test_waiting_starts_no_thread_and_returns_its_connection(
        store: RedisResultStore, raw: redis.Redis) -> None:
    threading.Timer(0.1, lambda: RedisResultStore(store.url).set(
        "t", states.SUCCESS, b"v", 60)).start()
    time.sleep(0.01)  # the timer's thread is running before we count
    threads = threading.active_count()
    got = store.wait("t", timeout=5)
    assert got is not None and got.payload == b"v"
    assert store.wait("never", timeout=0.2) is None
    assert threading.active_count() <= threads
    pool: Any = store._holder.client.connection_pool
    assert pool._in_use_connections == set()  # the blocking command gave it back
    # Only this store's own connections count: an earlier test in the same process
    # may still have a wait of its own blocked on this database.
    ports = {f"127.0.0.1:{conn._sock.getsockname()[1]}"
             for conn in pool._available_connections if conn._sock is not None}
    assert ports  # the connection came back to the pool, still open
    blocked = [c for c in raw.client_list()
               if c.get("cmd") == "brpoplpush" and c.get("addr") in ports]
    assert blocked == []


def test_a_waiter_times_out_on_time(store: RedisResultStore) -> None:
    store.set("slow", states.STARTED, b"s", 60)
    start = time.monotonic()
    got = store.wait("slow", timeout=0.3)
    elapsed = time.monotonic() - start
    assert got is not None and got.state == states.STARTED
    assert 0.3 <= elapsed < 1.0


# -- wait_for_new: a task this process just sent skips the first read ----------


def test_a_new_task_s_waiter_blocks_at_once_and_still_finds_an_earlier_write(
        store: RedisResultStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written before the waiter came: the notify list the write left answers."""
    reads: list[str] = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda task_id: reads.append(task_id) or real_get(task_id))
    sent = time.monotonic()
    store.set("new", states.SUCCESS, b"v", 60)
    start = time.monotonic()
    got = store.wait_for_new("new", timeout=10, sent=sent)
    assert got is not None and (got.state, got.payload) == (states.SUCCESS, b"v")
    assert time.monotonic() - start < 0.5
    assert reads == []  # no GET: one round trip
    threading.Timer(0.1, lambda: RedisResultStore(store.url).set(
        "later", states.SUCCESS, b"w", 60)).start()
    got = store.wait_for_new("later", timeout=10, sent=time.monotonic())
    assert got is not None and got.payload == b"w" and reads == []


def test_an_old_send_is_read_first_as_by_wait(store: RedisResultStore, redis_prefix: str,
                                              raw: redis.Redis) -> None:
    """Sent longer ago than the notify list can be trusted to live: its result may
    be there without the list, so the waiter reads first (no slice timeout)."""
    raw.set(f"{redis_prefix}:result:old", b"SUCCESS\nv", px=60_000)  # no notify list
    start = time.monotonic()
    got = store.wait_for_new("old", timeout=10, sent=time.monotonic() - 60)
    assert got is not None and got.payload == b"v"
    assert time.monotonic() - start < 0.5


def test_a_new_task_s_waiter_keeps_its_timeout_and_its_fallback(
        prefixed: str, redis_prefix: str, raw: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results_redis, "_BLOCK_SLICE", 0.2)
    store = RedisResultStore(prefixed)
    store.set("running", states.STARTED, b"s", 60)
    start = time.monotonic()
    got = store.wait_for_new("running", timeout=0.3, sent=time.monotonic())
    elapsed = time.monotonic() - start
    assert got is not None and got.state == states.STARTED
    assert 0.3 <= elapsed < 1.0  # one timeout, not a slice on top of it
    # A result without its notify list (never the case for a write made after
    # the send, short of eviction) is still found, one slice later.
    raw.set(f"{redis_prefix}:result:bare", b"SUCCESS\nv", px=60_000)
    got = store.wait_for_new("bare", timeout=10, sent=time.monotonic())
    assert got is not None and got.payload == b"v"
    store.close()


def test_a_new_task_s_waiter_reports_an_unreachable_server_as_wait_does() -> None:
    from conveyor.exceptions import ResultError

    store = RedisResultStore("redis://127.0.0.1:1/0?socket_connect_timeout=0.2")
    with pytest.raises(ResultError):
        store.wait_for_new("x", timeout=1, sent=time.monotonic())
    with pytest.raises(ResultError):
        store.wait("x", timeout=1)
