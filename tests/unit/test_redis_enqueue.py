"""RedisBroker.enqueue_many keeps two chunks in flight; these try to break that."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor._lua import LuaScript
from conveyor.brokers.base import Envelope
from conveyor.brokers.redis import ENQUEUE_CHUNK, RedisBroker


def envelopes(n: int, queue: str = "q") -> list[Envelope]:
    return [Envelope(id=f"m{i}", queue=queue, body=f"body {i}".encode()) for i in range(n)]


@pytest.fixture
def broker(redis_url: str) -> RedisBroker:
    return RedisBroker(f"{redis_url}?prefix=t-{uuid.uuid4().hex[:8]}")


def test_a_script_the_server_lacks_is_loaded_and_the_refused_chunks_sent_again(
    broker: RedisBroker,
) -> None:
    # A script text this server has never seen stands in for a restarted or
    # flushed server (SCRIPT FLUSH would disturb everyone sharing it).
    text = broker._scripts["enqueue"].script + f"\n-- {uuid.uuid4().hex}\n"
    broker._scripts["enqueue"] = LuaScript(text)
    envs = envelopes(2 * ENQUEUE_CHUNK + 500)
    assert broker.enqueue_many(envs + envs[:3]) == [e.id for e in envs + envs[:3]]
    got = broker.reserve(["q"], 3 * ENQUEUE_CHUNK, lease=30, timeout=0)
    assert [d.body for d in got] == [e.body for e in envs]


def test_a_failure_between_chunks_leaves_the_connection_clean(broker: RedisBroker) -> None:
    envs = envelopes(ENQUEUE_CHUNK + 10)
    bad = Envelope(id="bad\nid", queue="q", body=b"x")
    with pytest.raises(ValueError, match="contains a newline"):
        # The first chunk is already sent when the second fails to pack.
        broker.enqueue_many([*envs[:ENQUEUE_CHUNK], bad])
    # The first chunk's reply was never read; a reused connection would hand
    # it to the next command.  The next calls must see their own replies.
    assert broker.enqueue_many(envs) == [e.id for e in envs]
    assert broker.stats(["q"])[0].ready == ENQUEUE_CHUNK + 10
    assert broker.enqueue(Envelope(id="solo", queue="q", body=b"s")) == "solo"


def test_idempotency_keys_across_chunks_return_the_first_owner(broker: RedisBroker) -> None:
    keyed = [Envelope(id=f"k{i}", queue="q", body=b"x", idempotency_key=f"key{i % 5}")
             for i in range(ENQUEUE_CHUNK + 5)]
    owners = broker.enqueue_many(keyed)
    assert owners == [f"k{i % 5}" for i in range(ENQUEUE_CHUNK + 5)]
    assert broker.stats(["q"])[0].ready == 5


def test_send_many_on_redis_stores_every_call(redis_url: str) -> None:
    app = Conveyor("redis-send-many", broker=f"{redis_url}?prefix=t-{uuid.uuid4().hex[:8]}",
                   set_as_current=False)
    results = app.send_many("t.any", [(i,) for i in range(2 * ENQUEUE_CHUNK + 7)], priority=4)
    got = app.broker.reserve(["default"], 3 * ENQUEUE_CHUNK, lease=30, timeout=0)
    assert [d.id for d in got] == [r.id for r in results]
    assert {d.priority for d in got} == {3}  # 4 is served in its step, 3 (priority_steps)


def _contents(client: Any, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` (prefix removed) with its value, by type."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(f"{prefix}:*"):
        kind = client.type(key).decode()
        value: Any = {"hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
                      "set": client.smembers, "zset": lambda k: client.zrange(k, 0, -1),
                      "string": client.get}[kind](key)
        out[key.decode()[len(prefix):]] = value
    return out


def test_one_plain_message_is_stored_as_a_batch_of_one_would_be(redis_url: str) -> None:
    """``enqueue`` of a plain message runs enqueue_one.lua, a batch enqueue.lua:
    the keys they leave, and their answers, must be the same."""
    one = RedisBroker(f"{redis_url}?prefix=one")
    batch = RedisBroker(f"{redis_url}?prefix=batch")
    sends = [Envelope(id="a", queue="q", body=b"first"),
             Envelope(id="b", queue="q", body=b"urgent", priority=0),
             Envelope(id="c", queue="other", body=b"low", priority=7),
             Envelope(id="a", queue="q", body=b"again"),  # already stored: kept as it was
             Envelope(id="d", queue="q", body=b"", priority=12)]  # clamped to 9
    answers_one = [one.enqueue(e) for e in sends]
    answers_batch = [batch.enqueue_many([e])[0] for e in sends]
    assert answers_one == answers_batch == ["a", "b", "c", "a", "d"]
    client = one._holder.client
    stored = _contents(client, "one")
    assert stored == _contents(client, "batch")
    assert stored[":msg"][b"a"] == b"first"
    assert [d.id for d in one.reserve(["q", "other"], 10, lease=30, timeout=0)] == [
        "a", "b", "c", "d"]


def test_a_newline_is_refused_on_the_one_message_path_too(broker: RedisBroker) -> None:
    for bad in (Envelope(id="x\ny", queue="q", body=b""), Envelope(id="x", queue="q\n", body=b"")):
        with pytest.raises(ValueError, match="contains a newline"):
            broker.enqueue(bad)
    assert broker.stats(["q"])[0].ready == 0
