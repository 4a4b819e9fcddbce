"""Guarantees 1-5 with real worker processes on SQLite and Redis.

Whole-worker kills and tasks outliving their lease are in
tests/faults/test_worker_deaths.py (with a ledger); these are the rest.

Each test starts ``conveyor -A tests.integration.worker_app worker`` as a
subprocess, injects a fault, and reads the task ledger to count exactly what
ran, where and how often.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import TimeLimitExceeded, WorkerLostError

from .processes import Ledger, children_of, start_worker, stop, wait_for, worker_env

APP = "tests.integration.worker_app"
WORK = f"{APP}.work"
LEASE = 3.0


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def spawn(url: str, ledger: Ledger, tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen[bytes]] = []

    def _spawn(*args: str, **settings: object) -> subprocess.Popen[bytes]:
        settings.setdefault("broker_lease_timeout", LEASE)
        settings.setdefault("worker_heartbeat_interval", 0.5)
        env = worker_env(url, ledger.path, **settings)
        proc = start_worker(env, "-P", "prefork", *args, log=tmp_path / "worker.log")
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        stop(proc, signal.SIGKILL, timeout=10)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def all_ended(ledger: Ledger, ids: list[str]) -> bool:
    ended = ledger.count("end")
    return all(ended[i] >= 1 for i in ids)


def test_sigkill_of_a_child_mid_task_loses_nothing(client: Conveyor, spawn, ledger: Ledger) -> None:
    results = [client.send_task(WORK, [0.4]) for _ in range(20)]
    ids = [r.id for r in results]
    worker = spawn("-c", "2", "--prefetch-multiplier", "2")
    wait_for(lambda: len(ledger.events("start")) >= 3, 30, "tasks to start")
    running = {e[1]: e[3] for e in ledger.events("start")}
    ended = set(ledger.count("end"))
    victim_task, victim_pid = next((t, p) for t, p in running.items() if t not in ended)
    killed_at = time.monotonic()
    os.kill(victim_pid, signal.SIGKILL)
    wait_for(lambda: all_ended(ledger, ids), 60, "every task to finish")
    restarts = [e for e in ledger.events("start") if e[1] == victim_task]
    assert len(restarts) >= 2, "the killed task ran again"
    assert time.monotonic() - killed_at < LEASE + 30
    assert all(r.get(timeout=10) > 0 for r in results)
    assert worker.poll() is None, "the worker survived its child's death"
    assert len(children_of(worker.pid)) == 2, "the dead child was replaced"


def test_a_backlog_s_results_are_written_together_and_then_acked(
        client: Conveyor, spawn, tmp_path: Path) -> None:
    results = [client.send_task(WORK, [0]) for _ in range(40)]
    worker = spawn("-c", "2", "--prefetch-multiplier", "4", "-l", "DEBUG")
    assert all(r.get(timeout=60) in children_of(worker.pid) for r in results)
    # Most finished with more work in hand: their supervisor wrote them, a few at a time.
    assert "results for the slots in one call" in (tmp_path / "worker.log").read_text()
    wait_for(lambda: sum(s.inflight + s.ready for s in client.broker.stats(["default"])) == 0,
             10, "every message to be acknowledged")


def test_soft_time_limit_lets_the_task_clean_up(client: Conveyor, spawn, ledger: Ledger) -> None:
    result = client.send_task(f"{APP}.soft_limited")
    spawn("-c", "1")
    assert result.get(timeout=30) == "cleaned up"
    assert ledger.count("cleanup")[result.id] == 1


def test_hard_time_limit_kills_replaces_and_records(client: Conveyor, spawn,
                                                     ledger: Ledger) -> None:
    worker = spawn("-c", "1")
    limited = client.send_task(f"{APP}.hard_limited")
    with pytest.raises(TimeLimitExceeded):
        limited.get(timeout=30)
    after = client.send_task(WORK, [0])
    pid_after = after.get(timeout=30)
    [(_, _, _, pid_before)] = ledger.events("start")[:1]
    assert pid_after != pid_before, "a fresh child ran the next task"
    assert limited.state == states.FAILURE
    assert ledger.count("start")[limited.id] == 1, "the killed task is not run again"
    assert worker.poll() is None


def test_a_task_that_kills_its_process_is_dead_lettered(client: Conveyor, spawn,
                                                         ledger: Ledger) -> None:
    poison = client.send_task(f"{APP}.crash", ["exit"])
    healthy = [client.send_task(WORK, [0]) for _ in range(5)]
    spawn("-c", "2", task_max_deliveries=3)
    with pytest.raises(WorkerLostError, match="max_deliveries=3"):
        poison.get(timeout=60)
    assert all(r.get(timeout=30) > 0 for r in healthy)
    assert ledger.count("start")[poison.id] == 3
    # The failure is recorded first, then the message is moved: wait for the move.
    wait_for(lambda: client.broker.dead_letters("default"), 10, "the dead letter")
    [letter] = client.broker.dead_letters("default")
    assert letter.id == poison.id and "died each time" in letter.reason


def test_warm_shutdown_finishes_running_and_hands_back_the_rest_at_once(
        client: Conveyor, spawn, ledger: Ledger) -> None:
    results = [client.send_task(WORK, [1.5]) for _ in range(4)]
    worker = spawn("-c", "1", "--prefetch-multiplier", "4")
    wait_for(lambda: ledger.events("start"), 30, "the first task to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    [(_, started, _, _)] = ledger.events("start")
    assert ledger.count("end")[started] == 1, "the running task finished"
    stats = client.broker.stats(["default"])[0]
    assert (stats.ready, stats.inflight) == (3, 0), "the prefetched ones went back at once"
    assert results[0].id == started


def test_cold_shutdown_hands_everything_back_at_once(client: Conveyor, spawn, ledger: Ledger,
                                                     tmp_path: Path) -> None:
    client.send_task(WORK, [60])
    worker = spawn("-c", "1")
    wait_for(lambda: ledger.events("start"), 30, "the task to start")
    worker.send_signal(signal.SIGTERM)
    log = tmp_path / "worker.log"
    wait_for(lambda: "warm shutdown requested" in log.read_text(), 15, "the first signal")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) is not None
    stats = client.broker.stats(["default"])[0]
    assert (stats.ready, stats.inflight) == (1, 0)


def test_revoke_with_terminate_stops_a_running_task(client: Conveyor, spawn,
                                                    ledger: Ledger) -> None:
    worker = spawn("-c", "1")
    result = client.send_task(WORK, [60])
    wait_for(lambda: ledger.events("start"), 30, "the task to start")
    result.revoke(terminate=True)
    wait_for(lambda: result.state == states.REVOKED, 15, "the task to be revoked")
    assert client.send_task(WORK, [0]).get(timeout=30) > 0
    assert ledger.count("end")[result.id] == 0
    assert worker.poll() is None


def test_max_tasks_per_child_recycles(client: Conveyor, spawn, ledger: Ledger) -> None:
    results = [client.send_task(WORK, [0]) for _ in range(6)]
    spawn("-c", "1", "--max-tasks-per-child", "2")
    pids = [r.get(timeout=30) for r in results]
    assert len(set(pids)) == 3


def test_the_worker_logs_its_tasks_and_each_task_as_celery_does(
        client: Conveyor, spawn, tmp_path: Path) -> None:
    """Issue 16: at INFO a worker lists its tasks at start, and says of each task that it
    was received, succeeded (with its run time and value) or will be retried, in
    Celery's wording (celery/app/trace.py LOG_SUCCESS, worker/strategy.py "Received
    task")."""
    spawn()
    log = tmp_path / "worker.log"
    wait_for(lambda: "ready" in log.read_text(), 30, "the worker to start")
    assert "  . tests.integration.worker_app.flaky" in log.read_text()
    work = client.send_task("tests.integration.worker_app.work", (0.0,))
    flaky = client.send_task("tests.integration.worker_app.flaky")
    assert flaky.get(timeout=30) == "second try" and work.get(timeout=30) is not None
    text = log.read_text()
    assert f"Task tests.integration.worker_app.work[{work.id}] received" in text
    assert re.search(rf"Task tests.integration.worker_app.work\[{work.id}\] succeeded in "
                     r"\d+\.\d{3}s: ", text)
    assert re.search(rf"Task tests.integration.worker_app.flaky\[{flaky.id}\] retry: "
                     r"Retry in 0\.\d+s", text)
