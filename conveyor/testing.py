"""Helpers for testing code that uses Conveyor: a real worker in a thread.

    with run_worker(app) as worker:
        result = add.delay(2, 3)
        worker.join()           # until the queues are drained
        assert result.get(timeout=5) == 5

The worker runs the real path (messages are encoded, stored in the broker,
reserved, decoded, acknowledged); there is no eager shortcut.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from conveyor.app import Conveyor
from conveyor.exceptions import TimeoutError
from conveyor.worker.main import Worker


class ThreadedWorker:
    """A worker running on a background thread, with ``join()``."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, kwargs={"install_signals": False},
                                       name="conveyor-test-worker", daemon=True)

    def start(self) -> ThreadedWorker:
        self.thread.start()
        self.worker.wait_ready()
        return self

    def join(self, timeout: float = 30.0, include_delayed: bool = True) -> None:
        """Wait until the worker's queues hold nothing ready, leased (or delayed)."""
        broker = self.worker.app.broker
        deadline = time.monotonic() + timeout
        while True:
            pending = 0
            for s in broker.stats(self.worker.queues):
                pending += s.ready + s.inflight + (s.delayed if include_delayed else 0)
            if pending == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"queues still hold {pending} messages after {timeout}s")
            time.sleep(0.01)

    def stop(self, cold: bool = False, timeout: float = 30.0) -> None:
        self.worker.request_stop(cold=cold)
        self.thread.join(timeout)


@contextmanager
def run_worker(app: Conveyor, queues: Sequence[str] | None = None, concurrency: int = 2,
               pool: str = "threads", **options: object) -> Iterator[ThreadedWorker]:
    """Run a worker for the duration of a ``with`` block."""
    worker = Worker(app, queues=queues, concurrency=concurrency, pool=pool,
                    **options)  # type: ignore[arg-type]
    worker.poll_interval = 0.1  # tests stop many workers; do not wait a second each
    runner = ThreadedWorker(worker).start()
    try:
        yield runner
    finally:
        runner.stop()


# -- Celery's testing names (celery.contrib.testing) ------------------------------

TEST_CONFIG: dict[str, object] = {
    # The real path, in process: messages are still encoded and decoded.
    "broker_url": "memory://",
    "result_backend": "memory://",
    "timezone": "UTC",
}
PING_TASK = "conveyor.testing.ping"


def make_test_app(name: str = "conveyor.tests", config: Mapping[str, Any] | None = None,
                  **parameters: Any) -> Conveyor:
    """A fresh app for one test (Celery: ``TestApp``): in-memory broker and results of
    its own, then ``config`` on top; ``parameters`` go to :class:`Conveyor` itself.

    Each app gets its own ``memory://`` name unless ``config`` chooses a URL, so
    two tests never see each other's messages.
    """
    settings: dict[str, Any] = {**TEST_CONFIG, **(config or {})}
    own = f"memory://{name}-{uuid.uuid4().hex}"
    for key in ("broker_url", "result_backend"):
        if settings[key] == "memory://":
            settings[key] = own
    parameters.setdefault("set_as_current", False)
    return Conveyor(name, **parameters, **settings)


def _register_ping(app: Conveyor) -> None:
    if PING_TASK not in app.tasks:
        app.task(name=PING_TASK)(_pong)


def _pong() -> str:
    return "pong"


@contextmanager
def start_worker(app: Conveyor, concurrency: int = 1, pool: str = "solo",
                 loglevel: str | int | None = None, perform_ping_check: bool = True,
                 ping_task_timeout: float = 10.0, shutdown_timeout: float = 10.0,
                 queues: Sequence[str] | None = None, **options: Any) -> Iterator[ThreadedWorker]:
    """Celery's ``start_worker``: a real worker in a thread for a ``with`` block.

    With ``perform_ping_check`` a ``ping`` task makes one round trip through the
    broker before the block starts (as Celery's does), so a test never races a
    worker that is not consuming yet. ``loglevel`` sets up logging as the
    worker command would; None leaves the test runner's logging alone.
    """
    if loglevel is not None:
        from conveyor.log import setup_logging

        setup_logging(str(loglevel), app.conf.worker_log_format)
    if perform_ping_check:
        _register_ping(app)
    worker = Worker(app, queues=queues, concurrency=concurrency, pool=pool,
                    **options)
    worker.poll_interval = 0.1
    runner = ThreadedWorker(worker).start()
    try:
        if perform_ping_check:
            answer = app.send_task(PING_TASK, queue=worker.queues[0]).get(
                timeout=ping_task_timeout)
            if answer != "pong":
                raise AssertionError(f"the test worker answered {answer!r} to ping")
        yield runner
    finally:
        runner.stop(timeout=shutdown_timeout)
        if runner.thread.is_alive():
            raise RuntimeError(f"the test worker did not stop within {shutdown_timeout}s: "
                               "a task is still running (raise shutdown_timeout?)")

__all__ = ["ThreadedWorker", "make_test_app", "run_worker", "start_worker"]
