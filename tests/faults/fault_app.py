"""The app fault-injection workers load (``-A tests.faults.fault_app``).

Settings come from the environment (``CONVEYOR_BROKER_URL`` and friends),
which the CLI applies.  Every task appends ``event task_id attempt pid``
lines to the ledger file named by ``LEDGER`` (see ``tasklog.py``).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from conveyor import Conveyor
from conveyor._context import current_request
from conveyor.exceptions import BrokerError
from tests.faults.tasklog import record

app = Conveyor("fault_app")


@app.task(bind=True)
def sleep(self: Any, seconds: float = 0.0) -> int:
    """A task of a given length; returns the pid that ran it."""
    record("start")
    time.sleep(seconds)
    record("end")
    return os.getpid()


@app.task(bind=True)
def relay(self: Any, marker: str = "") -> bool:
    """Wait (up to a minute) until the file ``marker`` exists, then send a task from
    inside the worker; whether the send was accepted.  A worker's own publish must
    not stall its acknowledgements (RabbitMQ under a memory alarm)."""
    record("start")
    deadline = time.monotonic() + 60
    while marker and not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        sleep.delay(0.0)
        sent = True
    except BrokerError:
        sent = False
    record("end")
    return sent


@app.task(bind=True)
def hold_gil(self: Any, seconds: float) -> int:
    """Hold the GIL in C (the regex engine) for about ``seconds``."""
    record("start")
    pattern = re.compile(r"(a+)+$")  # catastrophic backtracking, all inside C
    deadline = time.monotonic() + seconds
    size = 20
    while time.monotonic() < deadline:
        pattern.match("a" * size + "b")
        size = min(size + 1, 23)
    record("end")
    return os.getpid()


@app.task(bind=True)
def poison(self: Any, how: str) -> None:
    """Kill the running process: ``segv``, ``exit`` (``os._exit``) or ``oom``."""
    record("start")
    if how == "segv":
        import ctypes

        ctypes.string_at(0)  # a real NULL dereference: SIGSEGV from C
    if how == "oom":
        hog = []
        for _ in range(64):  # up to 1 GiB, touched page by page, until the OOM stand-in kills us
            hog.append(bytearray(16 * 1024 * 1024))
            time.sleep(0.02)
        time.sleep(30)
    os._exit(3)


@app.task(bind=True)
def beat_tick(self: Any) -> None:
    """Sent by beat (case 9); the ledger's ``tick`` line names the tick it was sent for."""
    record("start")
    tick = current_request().headers.get("beat_tick", "none")
    record("tick", as_id=str(tick))
    record("end")


if os.environ.get("FAULT_BEAT_INTERVAL"):
    app.conf.update({"beat_schedule": {"tick": {
        "task": beat_tick.name, "schedule": float(os.environ["FAULT_BEAT_INTERVAL"]),
    }}}, source="tests/faults/fault_app.py")
