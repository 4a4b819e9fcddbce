"""What only the Redis broker and result store promise, beyond the shared contracts.

Most tests use the ``redis_url`` fixture (database 15 of the local server)
with a key prefix of their own, so they neither see nor disturb other keys.
The restart test starts a private ``redis-server`` on a free port, because it
kills it.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import states
from conveyor._redis import parse_redis_url
from conveyor.brokers import Envelope, QueueStats
from conveyor.brokers.redis import RedisBroker
from conveyor.exceptions import BrokerUnavailable, ConfigurationError, ResultError
from conveyor.resultstores.redis import RedisResultStore
from tests.conftest import IN_CI
from tests.redis_blocked import wait_blocked

pytestmark = pytest.mark.redis


def env(body: str = "x", queue: str = "q", **kw: Any) -> Envelope:
    return Envelope(id=uuid.uuid4().hex, queue=queue, body=body.encode(), **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def broker(prefixed: str) -> Iterator[RedisBroker]:
    b = RedisBroker(prefixed)
    yield b
    b.close()


# -- configuration --------------------------------------------------------------
def test_url_parsing() -> None:
    opts = parse_redis_url("redis://:s%40cret@db.example:6380/3?prefix=shop&socket_timeout=2")
    kw = opts.client_kwargs
    assert (opts.prefix, opts.address) == ("shop", "db.example:6380")
    assert (kw["host"], kw["port"], kw["db"], kw["password"]) == ("db.example", 6380, 3, "s@cret")
    assert kw["socket_timeout"] == 2.0
    assert parse_redis_url("redis://localhost").prefix == "conveyor"
    unix = parse_redis_url("unix:///run/redis.sock?db=2")
    assert (unix.client_kwargs["unix_socket_path"], unix.client_kwargs["db"]) == (
        "/run/redis.sock", 2)
    tls = parse_redis_url("rediss://h/0?ssl_cert_reqs=none")
    assert tls.client_kwargs["ssl"] is True and tls.client_kwargs["ssl_cert_reqs"] == "none"
    # Options (broker_transport_options) override the URL's query.
    assert parse_redis_url("redis://h/0?prefix=a", {"prefix": "b"}).prefix == "b"


def test_bad_options_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match="unknown Redis option 'sokcet_timeout'"):
        parse_redis_url("redis://h/0?sokcet_timeout=1")
    with pytest.raises(ConfigurationError, match="called 'prefix'"):
        parse_redis_url("redis://h/0", {"global_keyprefix": "x"})
    with pytest.raises(ConfigurationError, match="database number"):
        parse_redis_url("redis://h/zero")
    with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
        parse_redis_url("redis://h/0", {"visibility_timeout": 3600})
    assert "leases replace it" in caplog.text


# -- an unreachable server --------------------------------------------------------
def test_unreachable_server_gives_a_clear_error() -> None:
    port = free_port()  # nothing listens here
    b = RedisBroker(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=1")
    with pytest.raises(BrokerUnavailable) as enqueue_error:
        b.enqueue(env())
    message = str(enqueue_error.value)
    assert f"127.0.0.1:{port}" in message and "enqueue did not happen" in message
    assert "ids are deduplicated" in message
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}.*reserve did not happen"):
        b.reserve(["q"], 10, lease=30, timeout=1)
    with pytest.raises(BrokerUnavailable, match="enqueue_many"):
        b.enqueue_many([env(), env()])
    store = RedisResultStore(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(ResultError, match=f"127.0.0.1:{port}"):
        store.get("t")


# -- restart of the server --------------------------------------------------------
class RedisServer:
    """A throw-away redis-server this test may kill."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 10, "redis-server to start")
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (CI=true: required)")
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


def test_consumer_producer_and_waiter_survive_a_server_restart(
    private_redis: RedisServer,
) -> None:
    producer = RedisBroker(private_redis.url)
    consumer = RedisBroker(private_redis.url)
    store = RedisResultStore(private_redis.url)
    received: list[str] = []
    consumer_errors: list[str] = []
    waited: list[Any] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            try:
                got = consumer.reserve(["q"], 10, lease=30, timeout=0.5)
            except BrokerUnavailable as exc:
                consumer_errors.append(str(exc))
                time.sleep(0.05)  # the worker's backoff, in miniature
                continue
            received.extend(d.id for d in got)
            consumer.ack(got)

    threads = [threading.Thread(target=consume),
               threading.Thread(target=lambda: waited.append(store.wait("job", timeout=30)))]
    for t in threads:
        t.start()
    try:
        wait_blocked(producer._holder.client, consumer._holder.client, store._holder.client)
        private_redis.kill()
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{private_redis.port}"):
            producer.enqueue(env("lost?"))
        wait_until(lambda: bool(consumer_errors), 5, "the consumer to notice the outage")

        private_redis.start()
        message = env("after restart")
        deadline = time.monotonic() + 10
        while True:  # the producer's retry loop: errors until the server answers again
            try:
                producer.enqueue(message)
                break
            except BrokerUnavailable:
                assert time.monotonic() < deadline, "producer never recovered"
                time.sleep(0.1)
        wait_until(lambda: message.id in received, 10, "the consumer to recover")
        writer = RedisResultStore(private_redis.url)
        writer.set("job", states.SUCCESS, b"done", 60)
        wait_until(lambda: bool(waited), 10, "the result waiter to recover")
        assert waited[0] is not None and waited[0].payload == b"done"
        writer.close()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for closable in (producer, consumer, store):
            closable.close()
    assert received == [message.id]  # nothing from before the crash: it had no persistence


# -- key layout -------------------------------------------------------------------
# Every key the broker and the store write, as documented in their modules.
DOCUMENTED_KEYS = [
    r"msg", r"prio", r"token", r"deliv", r"queues",
    r"ready:{q}:\d", r"delayed:{q}", r"inflight:{q}", r"wake:{q}",
    r"dead:{q}", r"deadmsg:{q}", r"idem:.+", r"revoked:.+", r"mutex:.+",
    r"result:.+", r"result-notify:.+", r"group:.+", r"chord:.+:(parts|done)",
]


def _exercise(url: str, queue: str, tag: str) -> None:
    """Touch every kind of key once."""
    b = RedisBroker(url)
    b.enqueue(env("now", queue=queue, priority=7))
    b.enqueue(env("later", queue=queue, eta=time.time() + 60))
    b.enqueue(env("keyed", queue=queue, idempotency_key=f"k-{tag}"))
    held = b.reserve([queue], 2, lease=30, timeout=0)
    b.dead_letter(held[0], "bad")
    b.revoke([f"task-{tag}"], ttl=60)
    b.acquire_lease(f"beat-{tag}", "me", 60)
    s = RedisResultStore(url)
    s.set(f"task-{tag}", states.SUCCESS, b"1", 60)
    s.save_group(f"group-{tag}", b"[]", 60)
    s.chord_add(f"chord-{tag}", 0, 2, b"a", 60)
    s.close()
    b.close()


def test_every_key_is_under_the_prefix_and_documented(redis_url: str) -> None:
    tag = uuid.uuid4().hex[:10]
    prefix, queue = f"layout-{tag}", f"queue-{tag}"
    _exercise(f"{redis_url}?prefix={prefix}", queue, tag)
    client = redis.Redis.from_url(redis_url)
    # Other test runs may share this database: look only at keys naming our tag.
    mine = [k.decode() for k in client.scan_iter(match=f"*{tag}*", count=1000)]
    client.close()
    assert mine, "no keys were written"
    outside = [k for k in mine if not k.startswith(prefix + ":")]
    assert outside == []
    patterns = [re.compile(re.escape(prefix) + ":" + p.replace("{q}", re.escape(queue)) + "$")
                for p in DOCUMENTED_KEYS]
    undocumented = [k for k in mine if not any(p.match(k) for p in patterns)]
    assert undocumented == []


def test_two_prefixes_in_one_database_do_not_see_each_other(redis_url: str) -> None:
    a = RedisBroker(f"{redis_url}?prefix=a-{uuid.uuid4().hex[:8]}")
    b = RedisBroker(f"{redis_url}?prefix=b-{uuid.uuid4().hex[:8]}")
    try:
        a.enqueue(env("for a", idempotency_key="shared-key"))
        a.acquire_lease("beat", "a", 60)
        a.revoke(["t1"], ttl=60)
        assert b.reserve(["q"], 10, lease=30, timeout=0.2) == []
        assert b.queues() == [] and b.stats(["q"])[0].ready == 0
        assert b.lease_holder("beat") is None and b.revoked(["t1"]) == {}
        keyed = env("for b", idempotency_key="shared-key")
        assert b.enqueue(keyed) == keyed.id  # the key is per prefix too
        assert [d.body for d in a.reserve(["q"], 10, lease=30, timeout=0)] == [b"for a"]
    finally:
        a.close()
        b.close()


# -- concurrency ----------------------------------------------------------------
def _produce_once(url: str, barrier: Any, out: Any) -> None:
    b = RedisBroker(url)
    e = Envelope(id=uuid.uuid4().hex, queue="q", body=b"x",
                 idempotency_key="charge-42", idempotency_ttl=60)
    barrier.wait(30)
    out.put(b.enqueue(e))


def test_idempotency_key_holds_across_50_producer_processes(prefixed: str,
                                                            broker: RedisBroker) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(50)
    out = ctx.Queue()
    procs = [ctx.Process(target=_produce_once, args=(prefixed, barrier, out)) for _ in range(50)]
    for p in procs:
        p.start()
    owners = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert len(set(owners)) == 1
    assert broker.stats(["q"])[0].ready == 1


def test_a_burst_wakes_every_blocked_consumer(broker: RedisBroker, prefixed: str) -> None:
    """One wake token per queue is passed on, so no blocked consumer is left asleep."""
    consumers = [RedisBroker(prefixed) for _ in range(3)]
    got: list[tuple[float, int]] = []
    lock = threading.Lock()

    def consume(c: RedisBroker) -> None:
        batch = c.reserve(["q"], 2, lease=30, timeout=5)
        with lock:
            got.append((time.monotonic(), len(batch)))

    threads = [threading.Thread(target=consume, args=(c,)) for c in consumers]
    for t in threads:
        t.start()
    wait_blocked(broker._holder.client, *(c._holder.client for c in consumers))
    start = time.monotonic()
    broker.enqueue_many([env(str(i)) for i in range(6)])
    for t in threads:
        t.join(10)
    assert sorted(n for _, n in got) == [2, 2, 2]
    assert max(at for at, _ in got) - start < 0.5  # not the 1 s safety re-check
    for c in consumers:
        c.close()


def test_a_woken_consumer_gets_its_message_from_the_same_call(broker: RedisBroker,
                                                             prefixed: str) -> None:
    """The wake-up and the reserve behind it are sent together: the blocked call
    returns the message leased (token, delivery count), not just the wake token."""
    consumer = RedisBroker(prefixed)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend(
        consumer.reserve(["q"], 4, lease=30, timeout=5)))
    thread.start()
    wait_blocked(broker._holder.client, consumer._holder.client)
    broker.enqueue(env("woken"))
    thread.join(10)
    assert [d.body for d in got] == [b"woken"] and got[0].deliveries == 1
    assert consumer.ack(got) == [True]
    assert broker.stats(["q"])[0].ready == 0
    consumer.close()


def test_a_blocked_reserve_survives_a_script_flush(private_redis: RedisServer) -> None:
    """The reserve queued behind the block finds no script: it is loaded and run again."""
    producer, consumer = RedisBroker(private_redis.url), RedisBroker(private_redis.url)
    assert consumer.reserve(["q"], 1, lease=30, timeout=0) == []  # the script is loaded
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend(
        consumer.reserve(["q"], 1, lease=30, timeout=5)))
    thread.start()
    client = redis.Redis(port=private_redis.port)
    wait_blocked(client, consumer._holder.client)
    client.script_flush()
    client.close()
    producer.enqueue(env("after the flush"))
    thread.join(10)
    assert [d.body for d in got] == [b"after the flush"]
    producer.close()
    consumer.close()


def test_broker_keeps_working_in_a_forked_child(broker: RedisBroker) -> None:
    broker.enqueue(env("from parent"))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()

    def child() -> None:
        got = broker.reserve(["q"], 1, lease=30, timeout=1)
        broker.ack(got)
        broker.enqueue(env("from child"))
        out.put([d.body for d in got])

    p = ctx.Process(target=child)
    p.start()
    assert out.get(timeout=20) == [b"from parent"]
    p.join(10)
    assert [d.body for d in broker.reserve(["q"], 5, lease=30, timeout=1)] == [b"from child"]


# -- details the contract leaves open ----------------------------------------------
def test_dead_letters_page_newest_first_and_keep_odd_reasons(broker: RedisBroker) -> None:
    for i in range(5):
        broker.enqueue(env(f"body:{i}", priority=3))
    for d in broker.reserve(["q"], 5, lease=30, timeout=0):
        broker.dead_letter(d, f"reason: {d.body.decode()} ✗")
        time.sleep(0.002)  # distinct failure times
    page = broker.dead_letters("q", limit=2, offset=1)
    assert [x.body for x in page] == [b"body:3", b"body:2"]
    assert page[0].reason == "reason: body:3 ✗"
    assert abs(page[0].failed_at - time.time()) < 5
    assert broker.replay_dead("q") == 5
    replayed = broker.reserve(["q"], 10, lease=30, timeout=0)
    assert [d.body for d in replayed] == [f"body:{i}".encode() for i in range(5)]
    assert {(d.priority, d.deliveries) for d in replayed} == {(3, 1)}


def test_an_expired_lease_counts_as_ready_before_anyone_reserves(broker: RedisBroker) -> None:
    broker.enqueue(env("job"))
    broker.reserve(["q"], 1, lease=0.1, timeout=0)
    time.sleep(0.2)
    [s] = broker.stats(["q"])
    assert (s.ready, s.inflight) == (1, 0)


def test_a_consumer_with_a_skewed_clock_changes_nothing(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases and ETAs are judged by the server's clock, never the consumer's."""
    eta = time.time() + 0.6
    broker.enqueue(env("later", eta=eta))
    broker.enqueue(env("held"))
    [held] = broker.reserve(["q"], 1, lease=3, timeout=0)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # an hour fast
    # Neither the delayed message nor the other consumer's lease looks due.
    assert broker.reserve(["q"], 5, lease=30, timeout=0.2) == []
    got = broker.reserve(["q"], 5, lease=30, timeout=3)
    assert [d.body for d in got] == [b"later"] and real_time() >= eta - 0.01
    assert broker.ack([held]) == [True]


def test_priorities_outside_0_to_9_are_clamped(broker: RedisBroker) -> None:
    broker.enqueue(env("low", priority=-3))
    broker.enqueue(env("high", priority=42))
    got = broker.reserve(["q"], 2, lease=30, timeout=0)
    assert [(d.body, d.priority) for d in got] == [(b"low", 0), (b"high", 9)]


def test_result_wait_is_woken_by_the_write_not_by_polling(prefixed: str) -> None:
    waiter_store = RedisResultStore(prefixed)
    writer = RedisResultStore(prefixed)
    latencies: list[float] = []
    try:
        for _ in range(200):
            task_id = uuid.uuid4().hex
            ready = threading.Event()
            done: list[float] = []

            def wait(task_id: str = task_id, ready: threading.Event = ready,
                     done: list[float] = done) -> None:
                ready.set()
                waiter_store.wait(task_id, timeout=5)
                done.append(time.perf_counter())

            t = threading.Thread(target=wait)
            t.start()
            ready.wait()
            time.sleep(0.003)  # let the waiter subscribe
            start = time.perf_counter()
            writer.set(task_id, states.SUCCESS, b"ok", 60)
            t.join(5)
            latencies.append(done[0] - start)
    finally:
        waiter_store.close()
        writer.close()
    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1]
    print(f"result wait round trip: p50 {p50 * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms")
    assert p50 < 0.005


def test_set_many_publishes_ready_states_only(prefixed: str) -> None:
    store = RedisResultStore(prefixed)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(store.wait("b", timeout=5)))
    t.start()
    time.sleep(0.1)
    store.set_many([("a", states.STARTED, b"s"), ("b", states.FAILURE, b"f")], 60)
    t.join(5)
    assert got and got[0].state == states.FAILURE and got[0].payload == b"f"
    assert store.get("a") is not None and store.get("a").state == states.STARTED  # type: ignore[union-attr]
    store.close()


def test_batches_larger_than_a_script_slice(broker: RedisBroker) -> None:
    """Scripts work in slices of 1,000 (Lua's unpack limit); bigger calls still work."""
    envs = [env(str(i)) for i in range(2500)]
    assert broker.enqueue_many(envs + envs[:10]) == [e.id for e in envs + envs[:10]]
    got = broker.reserve(["q"], 2600, lease=30, timeout=0)
    assert [d.body for d in got] == [str(i).encode() for i in range(2500)]
    assert len({d.token for d in got}) == 2500
    assert broker.extend(got, 60) == [True] * 2500
    assert broker.ack(got) == [True] * 2500
    assert broker.stats(["q"]) == [QueueStats("q", 0, 0, 0, 0, oldest_age=0.0)]


def test_result_batches_survive_a_script_cache_flush(private_redis: RedisServer) -> None:
    """After a restart (or SCRIPT FLUSH) the pipelined batch loads its script again."""
    store = RedisResultStore(private_redis.url)
    store.set_many([("a", states.SUCCESS, b"1")], 60)
    redis.Redis(port=private_redis.port).script_flush()
    store.set_many([("b", states.SUCCESS, b"2"), ("c", states.STARTED, b"3")], 60)
    assert [s.payload if s else None for s in store.get_many(["a", "b", "c"])] == [
        b"1", b"2", b"3"]
    store.close()


def test_chord_fail_closes_the_join_once(prefixed: str) -> None:
    s = RedisResultStore(prefixed)
    assert s.chord_add("c", 0, 2, b"0", 60) is None
    assert s.chord_fail("c", 60) is True
    assert s.chord_fail("c", 60) is False
    assert s.chord_add("c", 1, 2, b"1", 60) is None  # the body never fires
    assert s.chord_add("d", 0, 1, b"0", 60) == [b"0"]
    assert s.chord_fail("d", 60) is False  # too late: the body already fired
    s.close()


def _join_or_fail(url: str, indexes: list[int], size: int, fail_at: int | None,
                  out: Any) -> None:
    s = RedisResultStore(url)
    outcomes = []
    for i in indexes:
        if i == fail_at:
            outcomes.append("failed" if s.chord_fail("mixed", 60) else "")
        elif s.chord_add("mixed", i, size, b"x", 60) is not None:
            outcomes.append("fired")
    out.put([o for o in outcomes if o])


def test_a_chord_fires_or_fails_exactly_once_across_processes(prefixed: str) -> None:
    size = 200
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_join_or_fail,
                         args=(prefixed, list(range(k, size, 4)), size,
                               150 if k == 2 else None, out))
             for k in range(4)]
    for p in procs:
        p.start()
    outcomes = [o for _ in procs for o in out.get(timeout=60)]
    for p in procs:
        p.join(10)
    assert outcomes == ["failed"]  # index 150 never arrives, so the set cannot complete


def test_reserve_reports_revocations_of_the_leased_tasks(broker: RedisBroker) -> None:
    """Reserve checks revocations while leasing, so consumers skip the extra MGET."""
    broker.enqueue_many([Envelope(id=i, queue="q", body=b"x") for i in ("t1", "t2~1", "t3")])
    broker.revoke(["t2", "t3"], ttl=60, terminate=True)
    got = {d.id: d.revoked for d in broker.reserve(["q"], 10, lease=30, timeout=0)}
    assert got == {"t1": False, "t2~1": True, "t3": True}
