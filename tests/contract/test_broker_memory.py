"""The broker contract on ``memory://`` (one process: the cross-process rules skip)."""

from __future__ import annotations

import pytest

from .broker_contract import BrokerContract


class TestMemoryBroker(BrokerContract):
    shared_across_processes = False

    @pytest.fixture
    def url(self, memory_url: str) -> str:
        return memory_url
