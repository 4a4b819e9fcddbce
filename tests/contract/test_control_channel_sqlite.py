"""The control-channel contract on SQLite (a file in this test's directory)."""

from __future__ import annotations

import pytest

from .control_channel_contract import ControlChannelContract


class TestSQLiteControlChannel(ControlChannelContract):
    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url
