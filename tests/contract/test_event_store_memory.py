"""The event store contract on ``memory://``."""

from __future__ import annotations

import pytest

from .event_store_contract import EventStoreContract


class TestMemoryEventStore(EventStoreContract):
    @pytest.fixture
    def url(self, memory_url: str) -> str:
        return memory_url
