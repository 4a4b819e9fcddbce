"""The event store contract on SQLite (a file in this test's directory)."""

from __future__ import annotations

import pytest

from .event_store_contract import EventStoreContract


class TestSQLiteEventStore(EventStoreContract):
    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url
