"""Every pool renews leases the same way, and says so when it cannot (issue 17).

The supervisor (``conveyor/worker/supervisor.py`` ``Supervisor._extend``)
renews what every slot holds every ``extend_every`` seconds.  The thread
pool used to swallow a failed renewal and ignore a lost lease while prefork
logged both; an operator reading the log of a thread-pool worker saw nothing
while its tasks were being handed to other workers.  docs/operations.md
tells operators to look for these lines.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor

from ..conftest import REDIS_PORT, TEST_REDIS_DB
from ..integration.processes import Ledger, start_worker, stop, wait_for, worker_env
from .proxy import FaultProxy

APP = "tests.integration.worker_app"
POOLS = ["threads", "prefork"]
QUERY = "socket_timeout=0.5&socket_connect_timeout=0.5"  # fail fast, well within a lease


def spawn(url: str, pool: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = worker_env(url, tmp_path / "ledger.txt", broker_lease_timeout=3.0)
    return start_worker(env, "-P", pool, "-c", "1", log=tmp_path / "worker.log")


@pytest.fixture
def client(redis_url: str) -> Iterator[Conveyor]:
    app = Conveyor("client", broker=redis_url, set_as_current=False)
    yield app
    app.close()


@pytest.mark.parametrize("pool", POOLS)
def test_a_lost_lease_is_logged(client: Conveyor, redis_url: str, pool: str,
                                tmp_path: Path) -> None:
    marker = tmp_path / "go"
    worker = spawn(redis_url, pool, tmp_path)
    try:
        result = client.send_task(f"{APP}.hold", [str(marker)], {"drop_lease": True})
        log = tmp_path / "worker.log"
        wait_for(lambda: f"leases lost for {result.id}" in log.read_text(), 30,
                 "the lost lease to be logged")
        marker.touch()
        assert result.get(timeout=30) == "done"
        assert Ledger(tmp_path / "ledger.txt").count("start")[result.id] == 1
    finally:
        stop(worker, signal.SIGKILL, timeout=10)


@pytest.mark.parametrize("pool", POOLS)
def test_a_failed_renewal_is_logged(client: Conveyor, redis_url: str, pool: str,
                                    tmp_path: Path) -> None:
    """Connections to Redis are reset for a while: the renewal's BrokerError is
    logged, and the task, whose lease outlives the cut, finishes once."""
    proxy = FaultProxy(REDIS_PORT, lifetime=120)
    marker = tmp_path / "go"
    worker = spawn(proxy.url(TEST_REDIS_DB, QUERY), pool, tmp_path)
    try:
        ledger = Ledger(tmp_path / "ledger.txt")
        result = client.send_task(f"{APP}.hold", [str(marker)])
        wait_for(lambda: ledger.count("start")[result.id], 30, "the task to start")
        log = tmp_path / "worker.log"
        proxy.reset()
        wait_for(lambda: "could not renew 1 leases" in log.read_text(), 30,
                 "the failed renewal to be logged")
        proxy.passthrough()
        marker.touch()
        assert result.get(timeout=30) == "done"
        assert ledger.count("start")[result.id] == 1
    finally:
        stop(worker, signal.SIGKILL, timeout=10)
        proxy.close()
