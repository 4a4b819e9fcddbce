"""The result store contract on ``memory://`` (one process: the cross-process rules skip)."""

from __future__ import annotations

import pytest

from .result_store_contract import ResultStoreContract


class TestMemoryResultStore(ResultStoreContract):
    shared_across_processes = False

    @pytest.fixture
    def url(self, memory_url: str) -> str:
        return memory_url
