"""The beat-state contract on SQLite: tables in the broker's file."""

from __future__ import annotations

import pytest

from conveyor.beat.state.sqlite import SQLiteBeatState

from .beat_state_contract import BeatStateContract


class TestSQLiteBeatState(BeatStateContract):
    store = SQLiteBeatState

    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url
