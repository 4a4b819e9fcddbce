"""The result store contract on Redis behind Sentinel (``sentinel://``, issue 21)."""

from __future__ import annotations

import pytest

from .result_store_contract import ResultStoreContract


class TestRedisSentinelResultStore(ResultStoreContract):
    @pytest.fixture
    def url(self, sentinel_url: str) -> str:
        return sentinel_url
