"""The event store contract on Redis: the test database, under a key prefix of this
test's own (``?prefix=``, as for the broker)."""

from __future__ import annotations

import pytest

from .event_store_contract import EventStoreContract


class TestRedisEventStore(EventStoreContract):
    counters_expire_by_themselves = True

    @pytest.fixture
    def url(self, prefixed: str) -> str:
        return prefixed
