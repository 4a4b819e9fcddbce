"""The control-channel contract on Redis behind Sentinel (``sentinel://``, issue 21):
pub/sub on the master's connections."""

from __future__ import annotations

import pytest

from .control_channel_contract import ControlChannelContract


class TestRedisSentinelControlChannel(ControlChannelContract):
    @pytest.fixture
    def url(self, sentinel_url: str) -> str:
        return sentinel_url
