"""The control-channel contract on a real Redis Cluster (``redis+cluster://``, issue 21):
plain pub/sub, which a cluster delivers to subscribers on every node."""

from __future__ import annotations

import pytest

from .control_channel_contract import ControlChannelContract


class TestRedisClusterControlChannel(ControlChannelContract):
    @pytest.fixture
    def url(self, cluster_url: str) -> str:
        return cluster_url
