"""The event store contract on Valkey (a ``redis://`` URL, issue 21)."""

from __future__ import annotations

import pytest

from .event_store_contract import EventStoreContract


class TestValkeyEventStore(EventStoreContract):
    counters_expire_by_themselves = True

    @pytest.fixture
    def url(self, valkey_url: str) -> str:
        return valkey_url
