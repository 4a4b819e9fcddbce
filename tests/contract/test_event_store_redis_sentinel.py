"""The event store contract on Redis behind Sentinel (``sentinel://``, issue 21)."""

from __future__ import annotations

import pytest

from .event_store_contract import EventStoreContract


class TestRedisSentinelEventStore(EventStoreContract):
    counters_expire_by_themselves = True

    @pytest.fixture
    def url(self, sentinel_url: str) -> str:
        return sentinel_url
