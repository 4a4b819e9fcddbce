"""The app the rate-limit and acknowledgement tests run in real workers.

Settings come from the environment (the CLI applies ``CONVEYOR_*``).  Tasks
write ``event task_id attempt pid`` ledger lines (``tasklog.py``); rate-limited
ones also append ``unix_time pid task_id`` to ``$LEDGER.starts``, to measure
how their starts are spaced.
"""

from __future__ import annotations

import os
import time

from conveyor import Conveyor
from conveyor._context import current_request
from tests.faults.tasklog import record

app = Conveyor("options_app")
app.conf.update({"queue_global_rate_limits": {"emails": "2/s"}},
                source="tests/faults/options_app.py")


def _note_start() -> None:
    line = f"{time.time():.6f} {os.getpid()} {current_request().id}\n"
    fd = os.open(os.environ["LEDGER"] + ".starts", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(rate_limit="2/s")
def per_worker() -> None:
    """At most two starts a second in each worker (Celery's rate_limit)."""
    _note_start()
    record("start")
    record("end")


@app.task(global_rate_limit="2/s")
def shared() -> None:
    """At most two starts a second across every worker of the broker."""
    _note_start()
    record("start")
    record("end")


@app.task
def mail() -> None:
    """No limit of its own: sent to the "emails" queue, which has a global one."""
    _note_start()
    record("start")
    record("end")


@app.task
def adjustable() -> None:
    """No limit until a remote ``rate_limit`` command gives it one."""
    _note_start()
    record("start")
    record("end")


@app.task
def unlimited() -> None:
    record("start")
    record("end")


def _sleep(seconds: float) -> None:
    record("start")
    time.sleep(seconds)
    record("end")


@app.task(acks_late=False)
def early_ack(seconds: float) -> None:
    """Acknowledged before it runs: at most once."""
    _sleep(seconds)


@app.task(reject_on_worker_lost=True)
def lost_rejected(seconds: float) -> None:
    _sleep(seconds)


@app.task(reject_on_worker_lost=False)
def lost_failed(seconds: float) -> None:
    _sleep(seconds)


@app.task(acks_on_failure_or_timeout=False)
def fails_unacked() -> None:
    record("start")
    raise ValueError("boom")


@app.task(acks_on_failure=False)
def fails_acks_on_failure_off() -> None:
    record("start")
    raise ValueError("boom")


@app.task(acks_on_timeout=False)
def fails_acks_on_timeout_off() -> None:
    """A plain failure: only timeouts are left unacknowledged."""
    record("start")
    raise ValueError("boom")


@app.task(acks_on_failure_or_timeout=False, time_limit=0.5, max_deliveries=2)
def times_out_unacked() -> None:
    _sleep(30)


@app.task(time_limit=0.5)
def times_out_acked() -> None:
    _sleep(30)
