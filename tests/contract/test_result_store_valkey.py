"""The result store contract on Valkey (a ``redis://`` URL, issue 21)."""

from __future__ import annotations

import pytest

from .result_store_contract import ResultStoreContract


class TestValkeyResultStore(ResultStoreContract):
    @pytest.fixture
    def url(self, valkey_url: str) -> str:
        return valkey_url
