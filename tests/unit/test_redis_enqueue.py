"""RedisBroker.enqueue_many keeps two chunks in flight; these try to break that."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor._lua import LuaScript
from conveyor.brokers.base import Envelope
from conveyor.brokers.redis import ENQUEUE_CHUNK, RedisBroker, _chunk_args
from tests.redis_blocked import wait_blocked


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
    for name in ("enqueue", "enqueue_plain"):
        text = broker._scripts[name].script + f"\n-- {uuid.uuid4().hex}\n"
        broker._scripts[name] = LuaScript(text)
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


def _general(broker: RedisBroker, envelopes: list[Envelope]) -> list[str]:
    """Send through enqueue.lua, whatever the messages (the reference)."""
    reply = broker._run("enqueue", *_chunk_args(envelopes))
    owners = [e.id for e in envelopes]
    for i in range(0, len(reply), 2):
        owners[int(reply[i]) - 1] = reply[i + 1].decode()
    return owners


def test_plain_messages_are_stored_as_enqueue_lua_stores_them(redis_url: str) -> None:
    """Plain messages go to enqueue_one.lua one at a time (``enqueue``, or
    ``enqueue_many`` of one) and to enqueue_plain.lua in chunks; the keys they
    leave and their answers must be enqueue.lua's."""
    plain = RedisBroker(f"{redis_url}?prefix=plain")
    general = RedisBroker(f"{redis_url}?prefix=general")
    singles = [Envelope(id="a", queue="q", body=b"first"),
               Envelope(id="c", queue="other", body=b"low", priority=7),
               Envelope(id="a", queue="q", body=b"again"),  # already stored: kept as it was
               Envelope(id="d", queue="q", body=b"", priority=12)]  # clamped to 9
    batch = [Envelope(id=f"b{i}", queue="q", body=f"b{i}".encode(), priority=3)
             for i in range(5)]
    batch[3] = Envelope(id="b1", queue="q", body=b"twice in one batch", priority=3)
    batch.append(Envelope(id="c", queue="q", body=b"stored before", priority=3))
    lone = Envelope(id="e", queue="q", body=b"alone in its batch", priority=2)
    answers = ([plain.enqueue(e) for e in singles] + plain.enqueue_many(batch)
               + plain.enqueue_many([lone]) + plain.enqueue_many([lone]))
    expected = ([_general(general, [e])[0] for e in singles] + _general(general, batch)
                + _general(general, [lone]) + _general(general, [lone]))
    assert answers == expected == ["a", "c", "a", "d", "b0", "b1", "b2", "b1", "b4", "c",
                                   "e", "e"]
    client = plain._holder.client
    stored = _contents(client, "plain")
    assert stored == _contents(client, "general")
    assert stored[":msg"][b"a"] == b"first" and stored[":msg"][b"b1"] == b"b1"
    assert [d.id for d in plain.reserve(["q", "other"], 20, lease=30, timeout=0)] == [
        "a", "e", "b0", "b1", "b2", "b4", "c", "d"]


def test_a_newline_is_refused_on_the_plain_paths_too(broker: RedisBroker) -> None:
    for bad in (Envelope(id="x\ny", queue="q", body=b""), Envelope(id="x", queue="q\n", body=b"")):
        with pytest.raises(ValueError, match="contains a newline"):
            broker.enqueue(bad)
        with pytest.raises(ValueError, match="contains a newline"):
            broker.enqueue_many([Envelope(id="fine", queue=bad.queue, body=b""), bad])
    assert broker.stats(["q"])[0].ready == 0


def test_a_sender_stores_what_enqueue_stores(redis_url: str) -> None:
    """``RedisBroker.sender`` (a ``.delay()``'s way in) packs enqueue_one.lua's call
    once per queue and priority; its keys and answers must be ``enqueue``'s."""
    tag = uuid.uuid4().hex[:8]
    sent = RedisBroker(f"{redis_url}?prefix=sent-{tag}")
    general = RedisBroker(f"{redis_url}?prefix=enq-{tag}")
    calls = [("a", "q", b"first", 0), ("c", "other", b"low", 7),
             ("a", "q", b"again", 0),  # already stored: kept as it was, its id answered
             ("d", "q", b"\r\n$0\r\n*1\r\n", 12),  # RESP-looking bytes; priority clamped to 9
             ("\u00e9t\u00e9", "q", b"", 0)]
    answers = []
    for message_id, queue, body, priority in calls:
        send = sent.sender(queue, priority)
        assert send is not None
        answers.append(send(message_id, body))
    expected = [general.enqueue(Envelope(i, q, b, p)) for i, q, b, p in calls]
    assert answers == expected == ["a", "c", "a", "d", "\u00e9t\u00e9"]
    client = sent._holder.client
    stored = _contents(client, f"sent-{tag}")
    assert stored == _contents(client, f"enq-{tag}")
    assert stored[":msg"][b"a"] == b"first" and stored[":queues"] == {b"q", b"other"}
    for key in [*client.scan_iter(f"sent-{tag}:*"), *client.scan_iter(f"enq-{tag}:*")]:
        client.delete(key)


def test_a_sender_loads_a_script_the_server_lacks(broker: RedisBroker) -> None:
    text = broker._scripts["enqueue_plain"].script + f"\n-- {uuid.uuid4().hex}\n"
    broker._scripts["enqueue_plain"] = LuaScript(text)  # a script this server never saw
    send = broker.sender("q", 0)
    assert send is not None
    assert send("m1", b"one") == "m1"
    assert send("m2", b"two") == "m2"
    assert [d.body for d in broker.reserve(["q"], 5, lease=30, timeout=0)] == [b"one", b"two"]


def test_no_sender_when_each_enqueue_waits_for_replicas(redis_url: str) -> None:
    """``wait_replicas`` makes every enqueue wait on its own connection: enqueue does it."""
    waiting = RedisBroker(f"{redis_url}?prefix=t-{uuid.uuid4().hex[:8]}&wait_replicas=1")
    assert waiting.sender("q", 0) is None
    assert RedisBroker(redis_url).sender("q\nx", 0) is None  # enqueue refuses it, with its error


def test_delay_wakes_an_idle_consumer_and_lists_its_queue(redis_url: str) -> None:
    """A ``.delay()`` through the sender still registers its queue and wakes a consumer
    blocked on it at once; while a token waits (nobody idle), it only checks the token."""
    url = f"{redis_url}?prefix=t-{uuid.uuid4().hex[:8]}"
    app = Conveyor("redis-delay-wakes", broker=url, set_as_current=False)

    @app.task(name="t.wake")
    def wake(n: int) -> int:
        return n

    consumer = RedisBroker(url)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend(
        consumer.reserve(["default"], 1, lease=30, timeout=5)))
    thread.start()
    wait_blocked(app.broker._holder.client, consumer._holder.client)
    start = time.monotonic()
    sent = wake.delay(1)
    assert app._plain["t.wake"][3]._send is not None  # (the sender's path was taken)
    thread.join(10)
    assert [d.id for d in got] == [sent.id]
    assert time.monotonic() - start < 0.5  # woken, not the 1 s re-check
    assert app.broker.queues() == ["default"]
    wake.delay(2)
    wake.delay(3)  # a token waits now: no SADD, and still one token
    client = consumer._holder.client
    assert client.llen(f"{consumer._prefix}:wake:default") == 1
    assert app.broker.queues() == ["default"]
    assert len(consumer.reserve(["default"], 5, lease=30, timeout=0)) == 2
    consumer.close()
    app.close()
