"""Case 10: workers with skewed clocks (libfaketime), on Redis.

The Redis broker's scripts read the server's clock (``TIME``) for ETAs and
lease deadlines, so a worker whose clock is an hour behind or ahead

* takes no delayed task before its ETA (as set by a producer with a right clock),
* keeps the lease of a long task (it is not declared dead and the task is
  not handed to another worker),
* and is listed as online by the monitor.

SQLite is one file on one host, hence one clock; it is not run here.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor._events import EventStore

from ..conftest import IN_CI
from ..integration.processes import Ledger, children_of, wait_for
from .harness import (
    LEASE,
    Figures,
    Workers,
    assert_nothing_lost,
    report,
    settled,
    task,
    total_queue,
    wait_ready,
)

SKEW = 3600  # seconds
COUNTDOWN = 3.0


def faketime(offset: int) -> list[str]:
    return ["faketime", "-f", f"{offset:+d}s"]


def worker_pid(proc: subprocess.Popen[bytes]) -> int:
    """The worker's supervisor: faketime runs it as its child."""
    [pid] = children_of(proc.pid)
    return pid


@pytest.fixture
def skewable() -> None:
    if shutil.which("faketime") is None:
        if IN_CI:
            pytest.fail("faketime is not installed (CI=true: apt-get install faketime)")
        pytest.skip("faketime is not installed (apt-get install faketime)")


class FirstSeen:
    """When (test clock) each task's first ``start`` line appeared in the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            now = time.monotonic()
            for _, task_id, _, _ in self.ledger.events("start"):
                self.at.setdefault(task_id, now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def first_seen(ledger: Ledger) -> Iterator[FirstSeen]:
    watcher = FirstSeen(ledger)
    yield watcher
    watcher.close()


@pytest.mark.parametrize("url", ["redis"], indirect=True)
def test_workers_an_hour_off_neither_run_early_nor_lose_their_lease(
        skewable: None, client: Conveyor, workers: Workers, ledger: Ledger,
        first_seen: FirstSeen) -> None:
    behind = workers.start("-c", "1", prefix=faketime(-SKEW))
    wait_ready(workers, behind)
    long_task = client.send_task(task("sleep"), [LEASE * 3 + 0.5]).id
    wait_for(lambda: long_task in first_seen.at, 30, "the long task to start")
    ahead = workers.start("-c", "2", prefix=faketime(+SKEW))
    wait_ready(workers, ahead)

    sent = time.monotonic()
    delayed = [client.send_task(task("sleep"), [0], countdown=COUNTDOWN).id for _ in range(5)]
    due = sent + COUNTDOWN
    ids = [long_task, *delayed]
    wait_for(lambda: settled(client.broker, ledger, ids), 60, "every task to run")
    events = client.events
    assert isinstance(events, EventStore)
    online = {w["pid"]: w["online"] for w in events.workers()}

    total = total_queue(client.broker, ledger, ids)
    assert_nothing_lost(total)
    early = {i: round(due - first_seen.at[i], 2) for i in delayed if first_seen.at[i] < due}
    assert not early, f"ran before their ETA (seconds early): {early}"
    late = max(first_seen.at[i] - due for i in delayed)
    assert late < 1.5, f"a delayed task started {late:.2f}s after its ETA"
    assert ledger.count("start")[long_task] == 1, "the long task's lease was lost"
    skewed = [worker_pid(behind), worker_pid(ahead)]
    assert all(online.get(pid) for pid in skewed), f"not listed as online: {skewed}, {online}"
    report(Figures("10 clock skew -1h/+1h (faketime)", "redis", len(ids), 2, len(total.lost),
                   len(total.duplicates), None,
                   f"ETA +{late:.2f}s, long task 1 run over {LEASE * 3 + 0.5:g}s"))
