"""The beat-state contract on ``memory://``: one history per URL, shared by the process."""

from __future__ import annotations

import pytest

from conveyor.beat.state.memory import MemoryBeatState

from .beat_state_contract import BeatStateContract


class TestMemoryBeatState(BeatStateContract):
    store = MemoryBeatState

    @pytest.fixture
    def url(self, memory_url: str) -> str:
        return memory_url
