"""A real worker on queues sharded over the masters of a real Redis Cluster
(``queue_shards``, docs/decisions/0027-queue-shards.md).

Three masters with a replica each (:mod:`tests.redis_cluster`).  The app asks
for three shards and places queue ``left`` on shard 1 and ``right`` on shard 2
(``queue_shard_map``), so their keys are on two masters other than the home
slot's, where results, the chord's join, events and remote control stay.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from redis.crc import key_slot

from conveyor import Conveyor, chord
from conveyor.brokers import Delivery, Envelope
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis_sharded import ShardedRedisBroker
from conveyor.testing import run_worker

from ..redis_blocked import connection_blocked, wait_until
from ..redis_cluster import RedisCluster
from .test_redis_cluster import _keys

pytestmark = pytest.mark.redis

T = 20.0
PLACES = {"left": 1, "right": 2}


def _app(url: str, prefix: str) -> Conveyor:
    app = Conveyor(f"sharded-{prefix}", broker=url, set_as_current=False)
    app.conf.broker_transport_options = {"prefix": prefix, "queue_shards": 3,
                                         "queue_shard_map": PLACES}

    @app.task(name="op.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="op.total")
    def total(values: list[int]) -> int:
        return sum(values)

    return app


def _masters(cluster: RedisCluster, broker: ShardedRedisBroker) -> list[int]:
    return [cluster.master_of(key_slot(shard.prefix.encode())) for shard in broker.shards]


def test_a_worker_consumes_queues_on_two_masters_and_joins_a_chord_across_them(
        redis_cluster: RedisCluster, cluster_url: str, redis_prefix: str) -> None:
    app = _app(cluster_url.split("?", 1)[0], redis_prefix)
    add, total = app.tasks["op.add"], app.tasks["op.total"]
    try:
        broker = app.broker
        assert isinstance(broker, ShardedRedisBroker)
        masters = _masters(redis_cluster, broker)
        assert len(set(masters)) == 3, masters
        with run_worker(app, queues=["left", "right"]):
            assert add.apply_async((1, 2), queue="left").get(timeout=T) == 3
            assert add.apply_async((3, 4), queue="right").get(timeout=T) == 7
            header = [add.s(i, i).set(queue=("left", "right")[i % 2]) for i in range(6)]
            joined = chord(header)(total.s().set(queue="right"))
            assert joined.get(timeout=T) == 30
        home, left, right = masters
        for queue, port, tag in (("left", left, broker.shards[1].prefix),
                                 ("right", right, broker.shards[2].prefix)):
            keys = _keys(port)
            assert f"{tag}:queues" in keys, (queue, keys)
            assert all(k.startswith(tag) for k in keys), keys
        home_keys = _keys(home)
        assert any(k.startswith(f"{{{redis_prefix}}}:result:") for k in home_keys)
        assert not any(":ready:" in k or ":inflight:" in k for k in home_keys), home_keys
    finally:
        app.close()


def _reserve_into(broker: ShardedRedisBroker, got: list[Delivery]) -> None:
    got.extend(broker.reserve(["left", "right"], 1, lease=5, timeout=5))


def _recording_waits(broker: ShardedRedisBroker, monkeypatch: pytest.MonkeyPatch
                     ) -> list[tuple[int, Any]]:
    """The (shard, connection) pairs the consumer's waits take, as they take them:
    its ``BLPOP`` connections are outside the shards' pools, where
    :func:`tests.redis_blocked.wait_blocked` would look."""
    taken: list[tuple[int, Any]] = []
    take = broker._waiters.take

    def recording(index: int, shard: RedisBroker) -> Any:
        conn = take(index, shard)
        taken.append((index, conn))
        return conn

    monkeypatch.setattr(broker._waiters, "take", recording)
    return taken


def test_an_idle_consumer_of_two_shards_wakes_for_either(
        cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocked on both shards at once: a message on the second shard is handed out
    well before the one-second re-check an idle consumer makes anyway.

    The message is sent only once both shards' masters list the consumer's
    ``BLPOP`` as blocked, so it can only be found by waking from the wait."""
    from conveyor.brokers import broker_from_url

    broker = broker_from_url(cluster_url, {"queue_shards": 3, "queue_shard_map": PLACES})
    assert isinstance(broker, ShardedRedisBroker)
    taken = _recording_waits(broker, monkeypatch)
    try:
        broker.reserve(["left", "right"], 1, lease=5, timeout=0)  # connect both shards
        for queue in ("right", "left"):
            got: list[Delivery] = []
            taken.clear()
            reserving = threading.Thread(target=_reserve_into, args=(broker, got))
            reserving.start()
            wait_until(lambda: {i for i, conn in list(taken) if connection_blocked(conn)}
                       == set(PLACES.values()), "the consumer blocked on both shards")
            sent = time.monotonic()
            broker.enqueue(Envelope(id=uuid.uuid4().hex, queue=queue, body=b"x"))
            reserving.join(6)
            waited = time.monotonic() - sent
            assert [d.queue for d in got] == [queue]
            assert waited < 0.8, f"woken {waited:.2f}s after the send to {queue}"
    finally:
        broker.close()
