"""The app a real prefork worker loads in the canvas tests (``-A tests.integration.canvas_app``).

Settings come from the environment (``CONVEYOR_BROKER_URL``), which the CLI
applies.  The chord body appends a line to the file named by ``LEDGER`` so the
test counts body runs across worker processes.
"""

from __future__ import annotations

import os

from conveyor import Conveyor

app = Conveyor("canvas_app")


def note(event: str, detail: str) -> None:
    line = f"{event} {os.getpid()} {detail}\n"
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one O_APPEND write: lines never interleave
    finally:
        os.close(fd)


@app.task
def square(x: int) -> int:
    note("header", str(x))
    return x * x


@app.task
def fail(x: int) -> int:
    raise ValueError(f"header {x} failed")


@app.task
def body(values: list[int]) -> list[int]:
    note("body", str(len(values)))
    return values


@app.task
def on_error(task_id: str) -> None:
    note("errback", task_id)


@app.task(time_limit=1.0)
def hang(x: int) -> int:
    """Killed by its hard time limit: the chord must fail, not wait forever."""
    import time

    time.sleep(60)
    return x
