"""The beat-state contract on a real Redis Cluster (``redis+cluster://``, issue 21)."""

from __future__ import annotations

import pytest

from conveyor.beat.state.redis import RedisBeatState

from .beat_state_contract import BeatStateContract


class TestRedisClusterBeatState(BeatStateContract):
    store = RedisBeatState

    @pytest.fixture
    def url(self, cluster_url: str) -> str:
        return cluster_url
