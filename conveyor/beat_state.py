"""Beat's run history, as imported before ``conveyor/beat/state/`` held it."""

from conveyor.beat.state import (
    ALIVE_AT,
    CUTOFF,
    SCHEDULER,
    BeatState,
    EntryRuns,
    from_micros,
    open_beat_state,
    to_micros,
)
from conveyor.beat.state.memory import MemoryBeatState, reset_memory_beat_state
from conveyor.beat.state.redis import RedisBeatState
from conveyor.beat.state.sqlite import SQLiteBeatState

__all__ = ["ALIVE_AT", "CUTOFF", "SCHEDULER", "BeatState", "EntryRuns", "MemoryBeatState",
           "RedisBeatState", "SQLiteBeatState", "from_micros", "open_beat_state",
           "reset_memory_beat_state", "to_micros"]
