"""The app fault-injection workers load (``-A tests.faults.fault_app``).

Settings come from the environment (``CONVEYOR_BROKER_URL`` and friends),
which the CLI applies.  Every task appends ``event task_id attempt pid``
lines to the ledger file named by ``LEDGER`` (one ``write`` with
``O_APPEND``, so lines from many processes never interleave); ``attempt`` is
the broker's delivery count, so a redelivery shows as a higher number.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from conveyor import Conveyor
from conveyor.context import current_request

app = Conveyor("fault_app")


def record(event: str) -> None:
    """Append one ledger line for the running task."""
    request = current_request()
    attempt = int(request.delivery_info.get("deliveries", 1))
    line = f"{event} {request.id} {attempt} {os.getpid()}\n"
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(bind=True)
def sleep(self: Any, seconds: float = 0.0) -> int:
    """A task of a given length; returns the pid that ran it."""
    record("start")
    time.sleep(seconds)
    record("end")
    return os.getpid()


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
def orm_write(self: Any, key: str) -> int:
    """Insert one row into PostgreSQL (``FAULT_PG_DSN``); the primary key makes it once."""
    import psycopg

    record("start")
    with psycopg.connect(os.environ["FAULT_PG_DSN"], connect_timeout=5) as conn:
        conn.execute("INSERT INTO fault_rows (key, pid) VALUES (%s, %s) "
                     "ON CONFLICT (key) DO NOTHING", (key, os.getpid()))
        time.sleep(float(os.environ.get("FAULT_TASK_SECONDS", "0")))
    record("end")
    return os.getpid()
