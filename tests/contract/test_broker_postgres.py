"""The broker contract on PostgreSQL (a schema of this test's own)."""

from __future__ import annotations

import pytest

from .broker_contract import BrokerContract


class TestPostgresBroker(BrokerContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url
