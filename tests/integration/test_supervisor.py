"""Issue 10: generated Supervisor configs run for real under ``supervisord``.

Supervisor comes from PyPI (a dev dependency).  The test generates the
config with ``conveyor.deploy``, runs ``supervisord`` on it against
``tests/integration/worker_app`` on SQLite and Redis, and checks that every
program starts, a SIGKILLed worker is restarted with nothing lost, a
graceful group restart mid-run loses nothing, and two beat programs
(a deployment mistake) still fire each tick once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.deploy import DeploySpec, QueueWorker, supervisor_config, supervisord_main_config

from .processes import ROOT, Ledger, wait_for, worker_env

APP = "tests.integration.worker_app"
WORK = f"{APP}.work"
BIN = Path(sys.executable).parent
BEAT_EVERY = 1.0


class Supervisor:
    """A private supervisord and its supervisorctl."""

    def __init__(self, conf: Path, env: dict[str, str]) -> None:
        self.conf, self.env = conf, env
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([str(BIN / "supervisord"), "-c", str(conf), "-n"],
                                     env=env, cwd=conf.parent, start_new_session=True)

    def ctl(self, *args: str) -> str:
        out = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
                             capture_output=True, text=True, env=self.env, timeout=60)
        return out.stdout

    def status(self) -> dict[str, str]:
        rows = [line.split() for line in self.ctl("status").splitlines() if line.strip()]
        return {row[0]: row[1] for row in rows if len(row) > 1}

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).strip() or 0)

    def close(self) -> None:
        self.ctl("stop", "all")
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


def specs(tmp_path: Path) -> tuple[DeploySpec, DeploySpec]:
    common = {"app": APP, "directory": str(ROOT), "venv": sys.prefix,
              "log_dir": str(tmp_path / "logs"), "shutdown_timeout": 20.0}
    main = DeploySpec(workers=(QueueWorker("default", 2),), beat=True, name="conv", **common)
    # The mistake the guarantee covers: a second beat program, e.g. from a stale config file.
    stray = DeploySpec(workers=(), beat=True, name="stray", **common)
    return main, stray


@pytest.fixture
def supervisor(url: str, tmp_path: Path) -> Iterator[tuple[Supervisor, Ledger]]:
    (tmp_path / "logs").mkdir()
    ledger = Ledger(tmp_path / "ledger.txt")
    main, stray = specs(tmp_path)
    text = supervisord_main_config(main, str(tmp_path), str(tmp_path / "sd.pid"),
                                   str(tmp_path / "sd.log"), str(tmp_path / "sd.sock"))
    text += "\n" + supervisor_config(stray)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text)
    env = worker_env(url, ledger.path, broker_lease_timeout=3, worker_heartbeat_interval=0.5,
                     beat_lease_timeout=2)
    env["BEAT_EVERY"] = str(BEAT_EVERY)
    sup = Supervisor(conf, env)
    try:
        yield sup, ledger
    finally:
        sup.close()


def running(sup: Supervisor) -> bool:
    states = sup.status()
    return len(states) == 3 and all(state == "RUNNING" for state in states.values())


def test_supervisor_runs_restarts_and_loses_nothing(supervisor: tuple[Supervisor, Ledger],
                                                     url: str) -> None:
    sup, ledger = supervisor
    wait_for(lambda: running(sup), 60, "every program to be RUNNING", interval=0.5)
    assert set(sup.status()) == {"conv:conv-worker-default", "conv:conv-beat", "stray:stray-beat"}
    client = Conveyor("client", broker=url, set_as_current=False)

    # 1. SIGKILL the worker: Supervisor restarts it and nothing is lost.
    batch = [client.send_task(WORK, [0.3], queue="default") for _ in range(30)]
    wait_for(lambda: ledger.events("start"), 60, "tasks to start")
    old_pid = sup.pid("conv:conv-worker-default")
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: sup.pid("conv:conv-worker-default") not in (0, old_pid), 60,
             "Supervisor to restart the worker", interval=0.5)
    assert all(r.get(timeout=90) > 0 for r in batch)

    # 2. A graceful restart of the whole group mid-run loses nothing.
    second = [client.send_task(WORK, [1.0], queue="default") for _ in range(10)]
    wait_for(lambda: any(e[1] == second[0].id for e in ledger.events("start")), 60,
             "the second batch to start")
    sup.ctl("restart", "conv:*")
    assert all(r.get(timeout=120) > 0 for r in second)

    # 3. Two beat programs: each tick fired once.
    elapsed = time.monotonic() - sup.started_at
    tick_ids = {e[1] for e in ledger.events("start")} - {r.id for r in batch + second}
    starts = ledger.count("start")
    assert all(starts[t] == 1 for t in tick_ids), "no tick ran twice"
    assert len(tick_ids) <= elapsed / BEAT_EVERY + 2, (len(tick_ids), elapsed)
    assert len(tick_ids) >= (elapsed - 30) / BEAT_EVERY, (len(tick_ids), elapsed)
    client.close()
