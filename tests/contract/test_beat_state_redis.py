"""The beat-state contract on Redis: hashes under the broker's key prefix."""

from __future__ import annotations

import pytest
import redis

from conveyor.beat.state.redis import RedisBeatState

from .beat_state_contract import PRECISE, BeatStateContract, open_for


class TestRedisBeatState(BeatStateContract):
    store = RedisBeatState

    @pytest.fixture
    def url(self, prefixed: str) -> str:
        return prefixed

    def test_history_lives_under_the_broker_prefix(self, url: str, redis_prefix: str) -> None:
        state = open_for(url)
        try:
            assert state.record_run("x", PRECISE)
        finally:
            state.close()
        client = redis.Redis.from_url(url.split("?", 1)[0])
        try:
            assert client.hexists(f"{redis_prefix}:beat:last_run", "x")
            assert not client.exists("conveyor:beat:last_run")
        finally:
            client.close()
