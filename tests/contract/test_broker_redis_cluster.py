"""The broker contract on a real Redis Cluster (``redis+cluster://``, issue 21).

Every key of the broker is under one hash-tagged prefix, so each Lua script
runs on the one master that owns that slot (docs/decisions/0026-redis-cluster.md).
"""

from __future__ import annotations

import pytest

from .broker_contract import BrokerContract


class TestRedisClusterBroker(BrokerContract):
    @pytest.fixture
    def url(self, cluster_url: str) -> str:
        return cluster_url
