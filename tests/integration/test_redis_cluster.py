"""A real worker on a real Redis Cluster (``redis+cluster://``, issue 21).

Three masters with a replica each (:mod:`tests.redis_cluster`).  An app's
every key is under its hash-tagged prefix (``{prefix}:``), so it lives on
the one master that owns that slot, where every Lua script can touch all
the keys it needs (docs/decisions/0026-redis-cluster.md).  Two apps with
prefixes on different slots are served by different masters: a cluster
spreads apps, not one app's queues.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.crc import key_slot

from conveyor import Conveyor, chord
from conveyor._events import store_for
from conveyor.testing import run_worker

from ..redis_cluster import RedisCluster
from .processes import wait_for

pytestmark = pytest.mark.redis

T = 20.0


def _keys(port: int) -> list[str]:
    client = redis.Redis(port=port)
    try:
        return sorted(k.decode() for k in client.keys("*"))
    finally:
        client.close()


def app_with_tasks(url: str, prefix: str, **settings: Any) -> Conveyor:
    """An app with two tasks (``op.add``, ``op.total``) under ``prefix``."""
    settings.setdefault("broker_transport_options", {"prefix": prefix})
    app = Conveyor(f"cluster-{prefix}", broker=url, set_as_current=False, **settings)

    @app.task(name="op.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="op.total")
    def total(values: list[int]) -> int:
        return sum(values)

    return app


def runs_everything(app: Conveyor) -> None:
    """A worker runs a task and a chord, stores its heartbeat and answers remote
    control: the broker, result store, event store and control channel each
    did their work.  The app is closed."""
    try:
        with run_worker(app):
            assert app.tasks["op.add"].delay(1, 2).get(timeout=T) == 3
            joined = chord([app.tasks["op.add"].s(i, i) for i in range(4)])(
                app.tasks["op.total"].s())
            assert joined.get(timeout=T) == 12
            # the first heartbeat is written by the worker's own loop, on its schedule
            wait_for(lambda: store_for(app).workers(), T, "the worker's heartbeat in the store")
            # (ping waits its whole timeout for replies)
            assert app.control.ping(timeout=1.5), "the worker answered remote control"
    finally:
        app.close()


def test_a_worker_runs_tasks_chords_events_and_control_on_one_master(
        redis_cluster: RedisCluster, cluster_url: str, redis_prefix: str) -> None:
    runs_everything(app_with_tasks(cluster_url.split("?", 1)[0], redis_prefix))
    owner = redis_cluster.master_of(key_slot(f"{{{redis_prefix}}}".encode()))
    keys = _keys(owner)
    assert keys and all(k.startswith(f"{{{redis_prefix}}}:") for k in keys), keys
    assert any(k.startswith(f"{{{redis_prefix}}}:result:") for k in keys)
    for port in redis_cluster.masters():
        if port != owner:
            assert _keys(port) == [], f"master {port} holds none of this app's keys"


def _prefixes_on_two_masters(cluster: RedisCluster, base: str) -> tuple[str, str]:
    first = f"{base}-a"
    owner = cluster.master_of(key_slot(f"{{{first}}}".encode()))
    for n in range(100):
        other = f"{base}-{n}"
        if cluster.master_of(key_slot(f"{{{other}}}".encode())) != owner:
            return first, other
    raise AssertionError("no second prefix found on another master")


def test_two_apps_on_two_masters_each_with_its_worker(
        redis_cluster: RedisCluster, cluster_url: str, redis_prefix: str) -> None:
    url = cluster_url.split("?", 1)[0]
    prefixes = _prefixes_on_two_masters(redis_cluster, redis_prefix)
    apps = [app_with_tasks(url, prefix) for prefix in prefixes]
    try:
        with run_worker(apps[0]), run_worker(apps[1]):
            results = [app.tasks["op.add"].delay(i, 10) for i, app in enumerate(apps)]
            assert [r.get(timeout=T) for r in results] == [10, 11]
    finally:
        for app in apps:
            app.close()
    owners = {redis_cluster.master_of(key_slot(f"{{{p}}}".encode())) for p in prefixes}
    assert len(owners) == 2
    for owner in owners:
        assert _keys(owner), f"master {owner} holds one app's keys"


def test_a_connection_to_a_node_that_lost_the_slot_asks_again(
        redis_cluster: RedisCluster, cluster_url: str, redis_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A resharding or failover seen from a stale connection: the node answers
    ``MOVED``; the call fails as "did not happen", and the next one goes to the
    owner, which the cluster names afresh."""
    from conveyor._redis import ClientHolder, failed_before_sending, parse_redis_url
    from conveyor._redis_cluster import SlotNotServed

    options = parse_redis_url(cluster_url)
    assert options.cluster is not None
    owner = redis_cluster.master_of(options.cluster.slot)
    elsewhere = next(port for port in redis_cluster.masters() if port != owner)
    client = ClientHolder(options).client
    slot_owner = client.connection_pool.connection_kwargs["slot_owner"]
    real_find = slot_owner.find
    monkeypatch.setattr(slot_owner, "find", lambda: ("127.0.0.1", elsewhere))
    try:
        with pytest.raises(SlotNotServed) as caught:
            client.set(f"{options.prefix}:k", b"v")
        assert failed_before_sending(caught.value)
        monkeypatch.setattr(slot_owner, "find", real_find)
        assert client.set(f"{options.prefix}:k", b"v")
        assert client.get(f"{options.prefix}:k") == b"v"
        assert f"{options.prefix}:k" in _keys(owner)
    finally:
        client.close()
