"""The control-channel contract on PostgreSQL (tables woken by LISTEN/NOTIFY)."""

from __future__ import annotations

import pytest

from .control_channel_contract import ControlChannelContract


class TestPostgresControlChannel(ControlChannelContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url
