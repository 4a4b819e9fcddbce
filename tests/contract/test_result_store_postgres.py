"""The result store contract on PostgreSQL (a schema of this test's own)."""

from __future__ import annotations

import pytest

from .result_store_contract import ResultStoreContract


class TestPostgresResultStore(ResultStoreContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url
