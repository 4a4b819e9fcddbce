"""Hard time limits end when the task function returns (issue 17, one supervisor).

The supervisor (``conveyor/worker/supervisor.py``) kills a task past its hard
limit; the task's slot reports the moment the function returns
(``until_return``), and from then on the limit no longer applies: the
worker's own result write and acknowledgement can take as long as they take.
Before, the thread pool kept the deadline until after the result write, so
``TimeLimitExceeded`` could be raised inside Conveyor's own code after a
successful task: the stored SUCCESS was then dead-lettered as an internal
error.  The soft limit already ends there (``Executor._call`` disarms its
timer when the call returns), as Celery's does.

Here a task past its limit is killed while another returns just before its
own limit and then waits, inside the worker, for the result store: the
test holds the SQLite result database's write lock across both deadlines
(the supervisor waits for it too when it records the killed task: the
lease is long enough for that).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import TimeLimitExceeded

from .processes import Ledger, start_worker, stop, wait_for, worker_env

APP = "tests.integration.worker_app"


@pytest.fixture
def results(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def client(redis_url: str, results: str) -> Iterator[Conveyor]:
    app = Conveyor("client", broker=redis_url, result_backend=results, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def worker(request: pytest.FixtureRequest, redis_url: str, results: str,
           tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "worker.log"
    env = worker_env(redis_url, tmp_path / "ledger.txt", result_backend=results,
                     broker_lease_timeout=10.0, worker_heartbeat_interval=0.5,
                     events_enabled="false")  # heartbeats would write to the locked file
    proc = start_worker(env, "-P", request.param, "-c", "2", "--prefetch-multiplier", "1",
                        log=log)
    yield proc, log
    stop(proc, signal.SIGKILL, timeout=10)


@pytest.mark.parametrize("worker", ["threads", "prefork"], indirect=True)
def test_a_kill_at_the_hard_limit_spares_a_task_that_returned_at_the_same_instant(
        client: Conveyor, worker: tuple[subprocess.Popen[bytes], Path],
        tmp_path: Path, results: str) -> None:
    proc, log = worker
    ledger = Ledger(tmp_path / "ledger.txt")
    assert client.send_task(f"{APP}.work", [0]).get(timeout=30) > 0  # the store exists
    db = sqlite3.connect(results.removeprefix("sqlite:///"), isolation_level=None)
    db.execute("BEGIN IMMEDIATE")  # every result write now waits for this lock
    try:
        killed = client.send_task(f"{APP}.hard_limited")
        spared = client.send_task(f"{APP}.returns_before_its_limit")
        wait_for(lambda: ledger.count("start")[spared.id], 30, "the second task to start")
        seen = time.monotonic()  # its hard deadline is at most 1 s after this
        wait_for(lambda: ledger.count("end")[spared.id], 30, "it to return")
        # Time is the subject here: hold the store past the spared task's deadline
        # and a few supervisor rounds (0.2 s each) after it.
        wait_for(lambda: time.monotonic() > seen + 1.8, 30, "its deadline to pass")
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert spared.get(timeout=30) == "finished"
    assert spared.state == states.SUCCESS
    with pytest.raises(TimeLimitExceeded):
        killed.get(timeout=30)
    kills = [line for line in log.read_text().splitlines() if "killing" in line]
    assert len(kills) == 1 and killed.id in kills[0]
    meets = [client.send_task(f"{APP}.meet", [2]) for _ in range(2)]
    assert [m.get(timeout=30) for m in meets] == ["met", "met"], "both slots serve again"
    assert client.broker.dead_letters("default") == []
    assert ledger.count("start")[killed.id] == 1, "the killed task is not run again"
    assert ledger.count("start")[spared.id] == 1
    text = log.read_text()
    assert "internal error" not in text and "crashed" not in text
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
