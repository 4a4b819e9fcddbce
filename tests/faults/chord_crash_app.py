"""The app for the chord crash-window test (``-A tests.faults.chord_crash_app``).

With ``CHORD_CRASH_MARKER`` set, the first worker process whose store call
completes a chord's join creates that file and SIGKILLs itself at once:
after the store handed it the parts, before the body was sent (the window
of docs/decisions/0002-canvas.md).  Later processes see the file and carry on.

A join is made by ``chord_add`` (a header whose result is not stored, and
stores that join after writing) or together with the header's result write
(``set_many_fenced_and_join``, ADR 0033), in the header's own process or in
the worker's supervisor, which writes the results of busy slots: every one
of those calls is wrapped.  ``CHORD_CRASH_IN_SLOT`` set turns the hand-off
to the supervisor off (a ``task_postrun`` receiver does, ADR 0029), so the
process that dies is the header's own.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from conveyor import Conveyor, signals
from conveyor.resultstores.base import ResultStore, Written
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


def _die_once() -> None:
    marker = os.environ.get("CHORD_CRASH_MARKER")
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap_chord_add(cls: type[ResultStore]) -> None:
    original = cls.chord_add

    def chord_add(self: ResultStore, chord_id: str, index: int, size: int, payload: bytes,
                  ttl: float) -> list[bytes] | None:
        parts = original(self, chord_id, index, size, payload, ttl)
        if parts is not None:
            _die_once()
        return parts

    cls.chord_add = chord_add  # type: ignore[method-assign]


def _wrap_write_and_join(cls: type[ResultStore]) -> None:
    original: Callable[..., list[Written]] = cls.set_many_fenced_and_join

    def set_many_fenced_and_join(self: ResultStore, writes: Any, ttl: float) -> list[Written]:
        written = original(self, writes, ttl)
        if any(w.parts is not None for w in written):
            _die_once()
        return written

    cls.set_many_fenced_and_join = set_many_fenced_and_join  # type: ignore[method-assign]


for _store in (RedisResultStore, SQLiteResultStore, PostgresResultStore):
    _wrap_chord_add(_store)
for _store in (ResultStore, RedisResultStore):  # the default, and Redis's one script
    _wrap_write_and_join(_store)

if os.environ.get("CHORD_CRASH_IN_SLOT"):
    @signals.task_postrun.connect
    def _in_the_slot(**_: Any) -> None:
        """Connected, it keeps every result write in its run's own process."""
