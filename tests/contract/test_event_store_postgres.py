"""The event store contract on PostgreSQL (a schema of this test's own)."""

from __future__ import annotations

import pytest

from .event_store_contract import EventStoreContract


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url
