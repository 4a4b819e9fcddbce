"""The broker contract on SQLite (a file in this test's directory)."""

from __future__ import annotations

import pytest

from .broker_contract import BrokerContract


class TestSQLiteBroker(BrokerContract):
    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url
