"""The beat-state contract on Redis behind Sentinel (``sentinel://``, issue 21)."""

from __future__ import annotations

import pytest

from conveyor.beat.state.redis import RedisBeatState

from .beat_state_contract import BeatStateContract


class TestRedisSentinelBeatState(BeatStateContract):
    store = RedisBeatState

    @pytest.fixture
    def url(self, sentinel_url: str) -> str:
        return sentinel_url
