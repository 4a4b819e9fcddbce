"""The result store contract on a real Redis Cluster (``redis+cluster://``, issue 21):
results, groups and chord joins on the app's one hash slot."""

from __future__ import annotations

import pytest

from .result_store_contract import ResultStoreContract


class TestRedisClusterResultStore(ResultStoreContract):
    @pytest.fixture
    def url(self, cluster_url: str) -> str:
        return cluster_url
