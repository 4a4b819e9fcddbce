"""The result store contract on Redis (the test database, flushed around each test)."""

from __future__ import annotations

import pytest

from .result_store_contract import ResultStoreContract


class TestRedisResultStore(ResultStoreContract):
    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url
