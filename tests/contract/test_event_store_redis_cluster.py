"""The event store contract on a real Redis Cluster (``redis+cluster://``, issue 21)."""

from __future__ import annotations

import pytest

from .event_store_contract import EventStoreContract


class TestRedisClusterEventStore(EventStoreContract):
    counters_expire_by_themselves = True

    @pytest.fixture
    def url(self, cluster_url: str) -> str:
        return cluster_url
