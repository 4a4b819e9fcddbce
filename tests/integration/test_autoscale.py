"""``worker --autoscale MAX,MIN`` and ``control.autoscale`` on a real prefork worker.

Celery (celery/worker/autoscale.py): the pool starts at MIN, grows at once to
the work at hand capped at MAX, and shrinks back only after ``keepalive``
seconds without growing (``AUTOSCALE_KEEPALIVE``, 30 s by default; 1 s here).
``control.autoscale(max, min)`` replies "autoscale now max=.. min=.." and a
worker without --autoscale replies "Autoscale not enabled".
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor

from .processes import Ledger, children_of, start_worker, stop, wait_for, worker_env

WORK = "tests.integration.worker_app.work"
NODE = "scaler@test"


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def spawn(url: str, tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen[bytes]] = []
    ledger = Ledger(tmp_path / "ledger.txt")

    def _spawn(*args: str) -> tuple[subprocess.Popen[bytes], Ledger]:
        env = worker_env(url, ledger.path, worker_heartbeat_interval=0.5)
        env["AUTOSCALE_KEEPALIVE"] = "1"
        proc = start_worker(env, "-P", "prefork", "-n", NODE, *args,
                            log=tmp_path / "worker.log")
        procs.append(proc)
        return proc, ledger

    yield _spawn
    for proc in procs:
        stop(proc, signal.SIGKILL, timeout=10)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_pool_grows_with_the_backlog_and_shrinks_when_idle(client: Conveyor,
                                                               spawn) -> None:
    worker, ledger = spawn("--autoscale", "4,1", "--prefetch-multiplier", "1")
    wait_for(lambda: len(children_of(worker.pid)) == 1, 30, "the pool to start at MIN")
    ids = [client.send_task(WORK, [1.5]).id for _ in range(8)]
    wait_for(lambda: len(children_of(worker.pid)) == 4, 30, "the pool to grow to MAX")
    wait_for(lambda: len(ledger.events("end")) == 8, 60, "the backlog to drain")
    assert sorted(e[1] for e in ledger.events("end")) == sorted(ids)
    wait_for(lambda: len(children_of(worker.pid)) == 1, 30, "the pool to shrink back to MIN")
    assert len({e[3] for e in ledger.events("start")}) >= 3, "the work was spread"


def test_control_autoscale_changes_the_bounds_of_a_running_worker(client: Conveyor,
                                                                  spawn) -> None:
    worker, _ = spawn("--autoscale", "4,1")
    wait_for(lambda: client.control.ping([NODE], timeout=0.3), 30, "the worker to answer")
    [reply] = client.control.autoscale(3, 2, reply=True, destination=[NODE], timeout=5)
    assert reply == {NODE: {"ok": "autoscale now max=3 min=2"}}
    wait_for(lambda: len(children_of(worker.pid)) == 2, 30, "the new MIN")


def test_a_worker_without_autoscale_says_so(client: Conveyor, spawn) -> None:
    spawn("-c", "1")
    wait_for(lambda: client.control.ping([NODE], timeout=0.3), 30, "the worker to answer")
    [reply] = client.control.autoscale(3, 2, reply=True, destination=[NODE], timeout=5)
    assert reply == {NODE: {"error": "Autoscale not enabled"}}
