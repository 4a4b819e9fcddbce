"""The beat-state contract on Valkey (a ``redis://`` URL, issue 21)."""

from __future__ import annotations

import pytest

from conveyor.beat.state.redis import RedisBeatState

from .beat_state_contract import BeatStateContract


class TestValkeyBeatState(BeatStateContract):
    store = RedisBeatState

    @pytest.fixture
    def url(self, valkey_url: str) -> str:
        return valkey_url
