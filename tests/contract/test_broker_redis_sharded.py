"""The broker contract on a real Redis Cluster with the queues sharded (``queue_shards=3``).

Each shard is a whole broker keyspace on a slot of its own
(docs/decisions/0027-queue-shards.md); the contract's queues (``q``, ``a``,
``b``) hash to different shards, so ordering, leases, dead letters,
revocations and stats are checked across shards as well as within one.
"""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from conveyor._redis_shards import ShardPlan
from conveyor.brokers import Broker
from conveyor.brokers.redis_sharded import ShardedRedisBroker

from ..redis_cluster import RedisCluster
from .broker_contract import BrokerContract

SHARDS = 3


def test_the_contracts_queues_are_on_different_shards() -> None:
    plan = ShardPlan(SHARDS)
    assert len({plan.shard_of(queue) for queue in ("q", "a", "b")}) >= 2


class TestShardedRedisClusterBroker(BrokerContract):
    @pytest.fixture
    def url(self, cluster_url: str) -> str:
        return f"{cluster_url}&queue_shards={SHARDS}"

    def test_each_shard_is_on_a_master_of_its_own(self, broker: Broker,
                                                  redis_cluster: RedisCluster) -> None:
        assert isinstance(broker, ShardedRedisBroker)
        slots = [key_slot(shard.prefix.encode()) for shard in broker.shards]
        assert len({redis_cluster.master_of(slot) for slot in slots}) == SHARDS
