"""The broker contract on Valkey (a ``redis://`` URL, issue 21): the Lua scripts,
streams and sorted sets of the Redis broker, unchanged."""

from __future__ import annotations

import pytest

from .broker_contract import BrokerContract


class TestValkeyBroker(BrokerContract):
    @pytest.fixture
    def url(self, valkey_url: str) -> str:
        return valkey_url
