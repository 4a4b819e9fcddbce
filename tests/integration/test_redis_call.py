"""``conveyor._redis.call``, ``call_many`` and ``conveyor._lua``: the direct command path.

They skip redis-py's per-command layers, so they must keep what those layers
guarantee: a connection that failed mid-command never hands its late reply to
the next caller, an error reply leaves the connection usable, and a script
the server forgot is loaded again.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from conveyor import _lua, states
from conveyor._events import TOTALS, Batch, TaskEntry
from conveyor._redis import call, call_many, new_client, parse_redis_url
from conveyor.eventstores.redis import RedisEventStore
from conveyor.resultstores.record import Attempt
from conveyor.resultstores.redis import RedisResultStore
from tests.integration.test_redis_specific import RedisServer, private_redis  # noqa: F401

pytestmark = pytest.mark.redis


@pytest.fixture
def key() -> str:
    return f"call-{uuid.uuid4().hex}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_timeout=0.3)
    yield c
    c.close()


def test_a_command_cut_off_by_a_timeout_does_not_leak_its_reply(
        client: redis.Redis, redis_url: str, key: str) -> None:
    with pytest.raises(redis.TimeoutError):
        call(client, "BLPOP", f"{key}:list", 2)  # outlives the 0.3 s socket timeout
    client.set(key, b"mine")
    other = redis.Redis.from_url(redis_url)
    other.rpush(f"{key}:list", b"late")  # would answer the abandoned BLPOP, were it alive
    other.close()
    assert call(client, "GET", key) == b"mine"
    assert call(client, "LRANGE", f"{key}:list", 0, -1) == [b"late"]  # nobody popped it


def test_an_error_reply_raises_and_keeps_the_connection(client: redis.Redis, key: str) -> None:
    client.set(key, b"text")
    with pytest.raises(redis.ResponseError):
        call(client, "INCR", key)
    pool = client.connection_pool
    idle = list(pool._available_connections)
    assert len(idle) == 1 and idle[0]._sock is not None
    assert call(client, "GET", key) == b"text"


def test_a_script_the_server_forgot_is_loaded_again(private_redis: RedisServer) -> None:  # noqa: F811
    store = RedisResultStore(private_redis.url)
    attempt = Attempt(1, 0, 1)
    assert store.set_fenced("a", states.SUCCESS, b"{}", 60, attempt)
    redis.Redis(port=private_redis.port).script_flush()
    assert store.set_fenced("b", states.SUCCESS, b"{}", 60, attempt)
    client = redis.Redis(port=private_redis.port)
    assert _lua.run(client, _lua.LuaScript("return 7"), [], []) == 7
    assert [s.state if s else None for s in store.get_many(["a", "b"])] == [states.SUCCESS] * 2
    client.close()
    store.close()


def test_commands_sent_together_answer_in_order_with_errors_in_place(
        client: redis.Redis, key: str) -> None:
    """``call_many`` reads every reply, so an error in the middle leaves the connection in step."""
    client.set(key, b"text")
    replies = call_many(client, ("GET", key), ("INCR", key), ("STRLEN", key))
    assert replies[0] == b"text"
    assert isinstance(replies[1], redis.ResponseError)
    assert replies[2] == 4
    assert call(client, "GET", key) == b"text"  # the next caller reads its own reply


def test_a_command_queued_behind_a_block_runs_when_the_block_ends(
        client: redis.Redis, redis_url: str, key: str) -> None:
    """Redis runs a connection's commands in order: the second waits for the first's wake-up."""
    other = redis.Redis.from_url(redis_url)
    other.rpush(f"{key}:wake", b"token")
    popped, after = call_many(client, ("BLPOP", f"{key}:wake", "0.2"),
                              ("LLEN", f"{key}:wake"))
    assert popped == [f"{key}:wake".encode(), b"token"] and after == 0
    timed_out, ran = call_many(client, ("BLPOP", f"{key}:wake", "0.05"), ("PING",))
    assert timed_out is None and ran in (b"PONG", "PONG", True)
    other.close()


def test_scripts_in_a_pipeline_are_loaded_before_it_is_sent(
        private_redis: RedisServer) -> None:  # noqa: F811
    """A NOSCRIPT inside a pipeline could not be retried (its other commands ran,
    the counters would count twice), so ``_lua.ensure_loaded`` loads first."""
    store = RedisEventStore(private_redis.url)
    client = redis.Redis(port=private_redis.port)
    try:
        for n in (1, 2):
            client.script_flush()
            now = time.time()
            entry = TaskEntry(f"t{n}", "add", "SUCCESS", updated_at=now)
            store.write(Batch(worker="w", cells={(TOTALS, "add", "n:SUCCESS"): 1},
                              tasks=[entry]))
            assert store.task(f"t{n}") is not None
        assert client.script_exists(_lua.script_file(
            "conveyor.eventstores", "upsert_tasks.lua").sha) == [True]
        assert ("add", "n:SUCCESS", 2) in store.totals()
    finally:
        client.close()
        store.close()


# -- the lending path of Conveyor's own pools (conveyor._redis.lend/give_back) --------

@pytest.fixture
def pooled(redis_url: str) -> Iterator[redis.Redis]:
    """A client as the broker and stores build one (a DroppingPool)."""
    c = new_client(parse_redis_url(redis_url, {"socket_timeout": 0.3}).client_kwargs)
    yield c
    c.close()


def test_threads_sharing_a_pool_each_read_their_own_replies(pooled: redis.Redis) -> None:
    wrong: list[tuple[bytes, object]] = []

    def echo(n: int) -> None:
        for i in range(300):
            mine = f"{n}-{i}".encode()
            got = call(pooled, "ECHO", mine)
            if got != mine:
                wrong.append((mine, got))

    threads = [threading.Thread(target=echo, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []
    pool = pooled.connection_pool
    assert pool._in_use_connections == set()  # type: ignore[attr-defined]
    assert 1 <= len(pool._available_connections) <= 8  # type: ignore[attr-defined]


def test_an_idle_connection_the_server_closed_is_replaced_before_use(
        pooled: redis.Redis, redis_url: str) -> None:
    first = call(pooled, "CLIENT", "ID")
    killer = redis.Redis.from_url(redis_url)
    assert killer.client_kill_filter(_id=first) == 1
    killer.close()
    # The server closed it while idle: the next call must not fail on it
    # (an enqueue sent there would raise "may or may not have taken effect").
    second = call(pooled, "CLIENT", "ID")
    assert second != first
    assert call(pooled, "CLIENT", "ID") == second  # and the new one is kept


def test_a_connection_holding_unread_bytes_is_not_lent(pooled: redis.Redis) -> None:
    first = call(pooled, "CLIENT", "ID")
    conn = pooled.connection_pool._available_connections[0]  # type: ignore[attr-defined]
    conn.send_command("ECHO", b"stray")  # a reply nobody will read
    deadline = time.monotonic() + 5
    while not conn.can_read() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert call(pooled, "ECHO", b"mine") == b"mine"
    assert call(pooled, "CLIENT", "ID") != first


def test_a_connection_that_failed_is_dropped_with_its_idle_siblings(
        pooled: redis.Redis, key: str) -> None:
    pool = pooled.connection_pool
    held = [pool.lend() for _ in range(3)]  # type: ignore[attr-defined]
    for conn in held:
        pool.give_back(conn)  # type: ignore[attr-defined]
    with pytest.raises(redis.TimeoutError):
        call(pooled, "BLPOP", f"{key}:list", 2)  # outlives the 0.3 s socket timeout
    idle = pool._available_connections  # type: ignore[attr-defined]
    assert len(idle) == 3 and all(c._sock is None for c in idle)
    assert call(pooled, "PING") in (b"PONG", True)


def test_a_forked_child_opens_its_own_connection(pooled: redis.Redis) -> None:
    parent_id = call(pooled, "CLIENT", "ID")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its connection's id, never touch the parent's
        try:
            os.write(write, str(call(pooled, "CLIENT", "ID")).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_id = int(os.read(read, 64) or b"0")
    os.close(read)
    assert status == 0
    assert child_id not in (0, parent_id)
    assert call(pooled, "CLIENT", "ID") == parent_id  # the parent's socket was left alone


@pytest.mark.parametrize("args", [
    ("SET", b"k", "é-text", 0),
    ("EVALSHA", "a" * 40, 2, b"key", b"\x00\xffbinary", 1733333333.125, -7, 2**63 - 1),
])
def test_packs_plain_arguments_as_redis_py_does(client: redis.Redis,
                                                args: tuple[object, ...]) -> None:
    """The direct path packs bytes, text and numbers itself (hiredis) instead of
    through redis-py's packer; the bytes on the wire are the same."""
    from conveyor._redis import _pack

    conn = client.connection_pool.get_connection()
    try:
        assert _pack(args) == b"".join(conn._command_packer.pack(*args))
    finally:
        client.connection_pool.release(conn)


def test_other_arguments_take_redis_pys_path(client: redis.Redis, key: str) -> None:
    """A bool or a memoryview is left to redis-py: its refusal and its encoding stand."""
    from conveyor._redis import _pack

    assert _pack(("SET", key, True)) is None
    assert _pack(("SET", key, memoryview(b"v"))) is None
    with pytest.raises(redis.DataError):
        call(client, "SET", key, True)
    assert call(client, "SET", key, memoryview(b"v")) in (b"OK", "OK", True)
    assert client.get(key) == b"v"


# -- exchange(): the socket work done without redis-py's send and read wrappers ----------

def test_a_connection_due_for_its_health_check_is_pinged_first(pooled: redis.Redis) -> None:
    assert call(pooled, "PING") in (b"PONG", True)
    conn = pooled.connection_pool._available_connections[0]  # type: ignore[attr-defined]
    assert conn.health_check_interval  # Conveyor's clients check every 30 s
    conn.next_health_check = 0.0  # due: redis-py's path runs the check
    assert call(pooled, "ECHO", b"after") == b"after"
    assert conn.next_health_check > time.monotonic() + conn.health_check_interval / 2
    assert call(pooled, "ECHO", b"direct") == b"direct"  # and the deadline moves on


def test_a_connection_the_server_closes_mid_call_raises_and_is_dropped(
        pooled: redis.Redis, redis_url: str, key: str) -> None:
    mine = call(pooled, "CLIENT", "ID")
    killer = redis.Redis.from_url(redis_url)
    timer = threading.Timer(0.1, lambda: killer.client_kill_filter(_id=mine))
    timer.start()
    with pytest.raises(redis.ConnectionError):
        call(pooled, "BLPOP", f"{key}:list", 0.25)
    timer.join()
    killer.close()
    idle = pooled.connection_pool._available_connections  # type: ignore[attr-defined]
    assert all(c._sock is None for c in idle)
    assert call(pooled, "CLIENT", "ID") != mine


def test_socket_errors_become_redis_pys_exceptions() -> None:
    import errno

    from conveyor._redis import _socket_error

    timed_out = _socket_error(TimeoutError("timed out"), "reading from here")
    assert isinstance(timed_out, redis.TimeoutError)
    dead = _socket_error(TimeoutError(errno.ETIMEDOUT, "Connection timed out"), "reading")
    assert isinstance(dead, redis.ConnectionError) and str(errno.ETIMEDOUT) in str(dead)
    reset = _socket_error(ConnectionResetError(errno.ECONNRESET, "reset"), "writing to socket")
    assert isinstance(reset, redis.ConnectionError)
    assert "while writing to socket" in str(reset)


def test_only_redis_pys_own_connections_with_hiredis_skip_its_wrappers(
        pooled: redis.Redis) -> None:
    from redis.sentinel import SentinelManagedConnection

    from conveyor._redis import _direct_parser
    from conveyor._redis_cluster import SlotConnection

    assert call(pooled, "PING") in (b"PONG", True)
    conn = pooled.connection_pool._available_connections[0]  # type: ignore[attr-defined]
    assert _direct_parser(conn) is conn._parser
    for cls in (SentinelManagedConnection, SlotConnection):  # their reads add checks
        assert _direct_parser(cls.__new__(cls)) is None


def test_a_write_larger_than_the_send_buffer_goes_out_whole() -> None:
    """One ``write`` takes what fits; ``sendall`` (with the socket's timeout) the rest."""
    import socket

    from conveyor._redis import _write

    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    left.settimeout(5.0)
    data = os.urandom(1 << 20)
    got = bytearray()

    def read() -> None:
        while len(got) < len(data):
            got.extend(right.recv(1 << 16))

    reader = threading.Thread(target=read)
    reader.start()
    _write(left, data)
    reader.join(10)
    left.close()
    right.close()
    assert bytes(got) == data
