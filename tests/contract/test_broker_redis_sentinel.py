"""The broker contract on Redis behind Sentinel (Celery's ``sentinel://`` URL, issue 21):
every call reaches the master the three sentinels name."""

from __future__ import annotations

import pytest

from .broker_contract import BrokerContract


class TestRedisSentinelBroker(BrokerContract):
    @pytest.fixture
    def url(self, sentinel_url: str) -> str:
        return sentinel_url
