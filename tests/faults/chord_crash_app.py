"""The app for the chord crash-window test (``-A tests.faults.chord_crash_app``).

With ``CHORD_CRASH_MARKER`` set, the first worker process whose ``chord_add``
completes a chord creates that file and SIGKILLs itself at once: after the
store handed it the parts, before the body was sent (the window of
docs/decisions/0002-canvas.md).  Later processes see the file and carry on.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from conveyor import Conveyor
from conveyor.resultstores.base import ResultStore
from conveyor.resultstores.postgres import PostgresResultStore
from conveyor.resultstores.redis import RedisResultStore
from conveyor.resultstores.sqlite import SQLiteResultStore
from tests.faults.tasklog import record

app = Conveyor("chord_crash_app")


@app.task(bind=True)
def part(self: Any, value: int) -> int:
    """A header member: returns its value."""
    record("end")
    return value


@app.task(bind=True)
def total(self: Any, values: list[int]) -> int:
    """The body: one ``end`` line per run, so a lost or repeated body shows."""
    record("end")
    return sum(values)


def _die_once_after_chord_add(cls: type[ResultStore]) -> None:
    original = cls.chord_add

    def chord_add(self: ResultStore, chord_id: str, index: int, size: int, payload: bytes,
                  ttl: float) -> list[bytes] | None:
        parts = original(self, chord_id, index, size, payload, ttl)
        marker = os.environ.get("CHORD_CRASH_MARKER")
        if parts is not None and marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return parts
            os.kill(os.getpid(), signal.SIGKILL)
        return parts

    cls.chord_add = chord_add  # type: ignore[method-assign]


for _store in (RedisResultStore, SQLiteResultStore, PostgresResultStore):
    _die_once_after_chord_add(_store)
