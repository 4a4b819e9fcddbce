"""The app real worker processes load in tests (``-A tests.integration.worker_app``).

Settings come from the environment (``CONVEYOR_BROKER_URL`` and friends),
which the CLI applies.  Tasks append ``event task_id attempt pid`` lines to
the ledger file named by ``LEDGER`` so tests can count exactly what ran
where, across processes and kills.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from conveyor import Conveyor, Queue
from conveyor.exceptions import SoftTimeLimitExceeded

app = Conveyor("worker_app")
if os.environ.get("BEAT_EVERY"):
    # A periodic `work` task, for tests that run beat against this app.
    app.conf.update({"beat_schedule": {"tick": {
        "task": "tests.integration.worker_app.work",
        "schedule": float(os.environ["BEAT_EVERY"]),
    }}})
if os.environ.get("RANKED_MAX_PRIORITY"):
    # Declared queues, "ranked" with a maximum priority of its own (Celery's
    # Queue(max_priority=)): what remote control's active_queues reports.
    app.conf.update({"task_queues": [Queue("default"), Queue(
        "ranked", max_priority=int(os.environ["RANKED_MAX_PRIORITY"]))]})


def record(event: str) -> None:
    request = work.request
    line = f"{event} {request.id} {request.retries} {os.getpid()}\n"
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


@app.task(bind=True)
def work(self: object, seconds: float = 0.0) -> int:
    """Sleep a while (a long task when seconds is large) and log start/end."""
    record("start")
    time.sleep(seconds)
    record("end")
    return os.getpid()


@app.task(bind=True)
def busy_c(self: object, seconds: float) -> int:
    """Hold the GIL in C for ``seconds`` (no bytecode runs meanwhile)."""
    record("start")
    import re

    # Catastrophic backtracking runs inside the regex engine without releasing the GIL.
    pattern = re.compile(r"(a+)+$")
    deadline = time.monotonic() + seconds
    n = 20
    while time.monotonic() < deadline:
        pattern.match("a" * n + "b")
        n = min(n + 1, 23)
    record("end")
    return os.getpid()


@app.task(bind=True, soft_time_limit=0.5)
def soft_limited(self: object) -> str:
    record("start")
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        record("cleanup")
        return "cleaned up"
    return "not interrupted"


@app.task(bind=True, time_limit=1.0)
def hard_limited(self: object) -> str:
    record("start")
    time.sleep(60)
    return "never"


@app.task(bind=True)
def crash(self: object, how: str = "exit") -> None:
    """A poison task: kills its own process."""
    record("start")
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    os._exit(3)


@app.task(bind=True, max_retries=1)
def flaky(self: Any) -> str:
    """Fails its first attempt with a retry, succeeds on the second."""
    if self.request.retries == 0:
        raise self.retry(countdown=0.1)
    return "second try"


@app.task(bind=True, time_limit=1.0)
def returns_before_its_limit(self: object) -> str:
    """Returns at 0.8 s of its 1 s hard limit (its result write may take longer)."""
    record("start")
    time.sleep(0.8)
    record("end")
    return "finished"


@app.task(bind=True)
def meet(self: object, expected: int) -> str:
    """Wait (bounded) until ``expected`` meet tasks run at once: proves that many slots."""
    record("meet")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(os.environ["LEDGER"]) as f:
            if sum(line.startswith("meet ") for line in f) >= expected:
                return "met"
        time.sleep(0.05)
    raise RuntimeError(f"fewer than {expected} meet tasks ran at once")


@app.task(bind=True)
def hold(self: Any, marker: str, drop_lease: bool = False) -> str:
    """Run until ``marker`` exists (bounded); with ``drop_lease``, first acknowledge
    its own message, so its lease is gone (as when another consumer took it over)."""
    record("start")
    if drop_lease:
        self.app.broker.ack([self.request.delivery])
    deadline = time.monotonic() + 30
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "done"


@app.task(bind=True)
def started_at(self: object) -> float:
    """When a worker began running it (Unix time): the sender measures pick-up latency."""
    began = time.time()
    record("start")
    record("end")
    return began


@app.task
def loaded(prefix: str) -> list[str]:
    """The modules under ``prefix`` this worker process has imported."""
    import sys

    return sorted(name for name in sys.modules if name == prefix or name.startswith(f"{prefix}."))
