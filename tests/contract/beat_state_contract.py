"""The beat-state contract (conveyor/beat/state/base.py): what every history store keeps.

Not collected itself (no ``test_`` prefix, and the class has no ``Test``
prefix): each store's module, ``tests/contract/test_beat_state_<store>.py``,
subclasses :class:`BeatStateContract` with one small class that names the
store's class and gives a ``url`` fixture.  A new store gets the whole
contract that way.

Beat's exactly-once rests on these properties (ADR 0003): times come back
exact to the microsecond (tick identities are derived from them), history
only moves forward (a paused leader that resumes late cannot roll it back),
and every process that opens the store beside the same broker sees the same
history.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from conveyor import Conveyor
from conveyor.beat.state import ALIVE_AT, CUTOFF, SCHEDULER, BeatState, open_beat_state

UTC = timezone.utc
PRECISE = datetime(2024, 1, 1, 0, 0, 1, 123457, tzinfo=UTC)


def open_for(url: str) -> BeatState:
    """The store beside a broker at ``url``, opened as beat opens it."""
    return open_beat_state(Conveyor("beat_state_contract", broker=url, set_as_current=False))


class BeatStateContract:
    """Subclass with ``store`` (the class ``open_beat_state`` must choose) and a ``url`` fixture."""

    store: type[BeatState]

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError("a store's test class gives the broker URL")

    @pytest.fixture
    def state(self, url: str) -> Iterator[BeatState]:
        opened = open_for(url)
        yield opened
        opened.close()

    @pytest.fixture
    def other(self, url: str) -> Iterator[BeatState]:
        """A second store on the same URL: another beat process's view."""
        opened = open_for(url)
        yield opened
        opened.close()

    def test_the_broker_url_chooses_this_store(self, state: BeatState) -> None:
        assert type(state) is self.store

    def test_history_only_moves_forward(self, state: BeatState) -> None:
        assert state.last_run("x") is None and state.get(ALIVE_AT) is None
        assert state.record_run("x", PRECISE)
        assert not state.record_run("x", PRECISE - timedelta(microseconds=1))
        assert state.record_run("x", PRECISE + timedelta(seconds=1))
        assert state.last_run("x") == PRECISE + timedelta(seconds=1)
        assert state.runs()["x"].total_run_count == 2
        assert state.runs(["x", "y"]).keys() == {"x"}
        state.advance(CUTOFF, PRECISE)
        state.advance(CUTOFF, PRECISE - timedelta(hours=1))
        assert state.get(CUTOFF) == PRECISE

    def test_the_same_tick_twice_is_recorded_once(self, state: BeatState) -> None:
        assert state.record_run("x", PRECISE)
        assert not state.record_run("x", PRECISE)
        assert state.runs(["x"])["x"].total_run_count == 1

    def test_times_come_back_exact_and_in_utc(self, state: BeatState) -> None:
        """A tick derived in another process must match to the microsecond (tick_key)."""
        kathmandu = timezone(timedelta(hours=5, minutes=45))
        local = PRECISE.astimezone(kathmandu)
        assert state.record_run("x", local)
        back = state.last_run("x")
        assert back == PRECISE and back is not None and back.utcoffset() == timedelta(0)
        state.advance(ALIVE_AT, local)
        assert state.get(ALIVE_AT) == PRECISE

    def test_naive_times_are_refused(self, state: BeatState) -> None:
        with pytest.raises(ValueError, match="aware"):
            state.record_run("x", PRECISE.replace(tzinfo=None))
        with pytest.raises(ValueError, match="aware"):
            state.advance(ALIVE_AT, PRECISE.replace(tzinfo=None))
        assert state.last_run("x") is None and state.get(ALIVE_AT) is None

    def test_entries_are_kept_apart(self, state: BeatState) -> None:
        assert state.record_run("a", PRECISE)
        assert state.record_run("b", PRECISE + timedelta(seconds=5))
        assert state.record_run("b", PRECISE + timedelta(seconds=10))
        runs = state.runs()
        assert runs.keys() == {"a", "b"}
        assert (runs["a"].last_run_at, runs["a"].total_run_count) == (PRECISE, 1)
        assert (runs["b"].last_run_at, runs["b"].total_run_count) == (
            PRECISE + timedelta(seconds=10), 2)
        assert state.runs(["b"]).keys() == {"b"}
        assert state.runs([]) == {}

    def test_alive_at_and_cutoff_are_separate_and_only_advance(self, state: BeatState) -> None:
        state.advance(ALIVE_AT, PRECISE)
        assert state.get(CUTOFF) is None
        state.advance(ALIVE_AT, PRECISE - timedelta(seconds=1))
        assert state.get(ALIVE_AT) == PRECISE
        state.advance(ALIVE_AT, PRECISE + timedelta(seconds=1))
        assert state.get(ALIVE_AT) == PRECISE + timedelta(seconds=1)

    def test_notes_are_last_writer_wins(self, state: BeatState) -> None:
        assert state.note(SCHEDULER) is None
        state.set_note(SCHEDULER, "pkg.mod:First")
        state.set_note(SCHEDULER, "pkg.mod:Second")
        assert state.note(SCHEDULER) == "pkg.mod:Second"
        assert state.note("other") is None

    def test_another_process_sees_the_same_history(self, state: BeatState,
                                                   other: BeatState) -> None:
        assert state.record_run("x", PRECISE)
        state.advance(CUTOFF, PRECISE)
        state.set_note(SCHEDULER, "pkg.mod:Sched")
        assert other.last_run("x") == PRECISE
        assert other.get(CUTOFF) == PRECISE
        assert other.note(SCHEDULER) == "pkg.mod:Sched"
        # A late write from the other view cannot move it back either.
        assert not other.record_run("x", PRECISE - timedelta(seconds=10))
        assert state.last_run("x") == PRECISE

    def test_concurrent_writers_of_one_tick_record_it_once(self, url: str) -> None:
        """Two leaders (one paused and resumed) recording the same tick at once: one wins."""
        stores = [open_for(url) for _ in range(4)]
        start = threading.Barrier(len(stores))
        won: list[bool] = []

        def record(store: BeatState) -> None:
            start.wait(timeout=10)
            won.append(store.record_run("x", PRECISE))

        threads = [threading.Thread(target=record, args=(s,)) for s in stores]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert sorted(won) == [False, False, False, True]
            assert stores[0].runs(["x"])["x"].total_run_count == 1
        finally:
            for store in stores:
                store.close()
