"""The control-channel contract on Redis (pub/sub and the test database)."""

from __future__ import annotations

import pytest

from .control_channel_contract import ControlChannelContract


class TestRedisControlChannel(ControlChannelContract):
    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url
