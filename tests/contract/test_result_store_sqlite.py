"""The result store contract on SQLite (a file in this test's directory)."""

from __future__ import annotations

import pytest

from .result_store_contract import ResultStoreContract


class TestSQLiteResultStore(ResultStoreContract):
    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url
