"""``conveyor._redis.call``, ``call_many`` and ``conveyor._lua``: the direct command path.

They skip redis-py's per-command layers, so they must keep what those layers
guarantee: a connection that failed mid-command never hands its late reply to
the next caller, an error reply leaves the connection usable, and a script
the server forgot is loaded again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from conveyor import _lua, states
from conveyor._events import TOTALS, Batch, TaskEntry
from conveyor._redis import call, call_many
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
