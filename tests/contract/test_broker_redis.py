"""The broker contract on Redis (the test database, flushed around each test)."""

from __future__ import annotations

import pytest

from .broker_contract import BrokerContract


class TestRedisBroker(BrokerContract):
    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url
