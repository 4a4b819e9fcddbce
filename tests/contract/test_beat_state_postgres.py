"""The beat-state contract on PostgreSQL: tables in the broker's schema."""

from __future__ import annotations

import pytest

from conveyor.beat.state.postgres import PostgresBeatState

from .beat_state_contract import BeatStateContract


class TestPostgresBeatState(BeatStateContract):
    store = PostgresBeatState

    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url
