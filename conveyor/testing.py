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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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
