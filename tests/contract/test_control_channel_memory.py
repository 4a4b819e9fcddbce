"""The control-channel contract on ``memory://``."""

from __future__ import annotations

import pytest

from .control_channel_contract import ControlChannelContract


class TestMemoryControlChannel(ControlChannelContract):
    @pytest.fixture
    def url(self, memory_url: str) -> str:
        return memory_url
