"""Issue 10: generated Supervisor configs run for real under ``supervisord``.

Supervisor comes from PyPI (a dev dependency).  The test generates the
config with ``conveyor._deploy``, runs ``supervisord`` on it against
``tests/integration/worker_app`` on SQLite and Redis, and checks that every
program starts, a SIGKILLed worker is restarted with nothing lost, a
graceful group restart mid-run loses nothing, and two beat programs
(a deployment mistake) still fire each tick once.
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor._deploy import (
    DeploySpec,
    QueueWorker,
    env_file_text,
    supervisor_config,
    supervisord_main_config,
)

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
              "log_dir": str(tmp_path / "logs"), "shutdown_timeout": 20.0,
              "user": getpass.getuser()}
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


def test_secrets_reach_the_programs_only_through_the_0600_file(tmp_path: Path) -> None:
    """Issue 15, finding 4: the broker password is in no generated file and no argv;
    the worker gets it from the environment file (``conveyor --env-file``, since
    supervisord has no such setting) and runs tasks against a Redis that needs it."""
    from tests.security import private_redis

    password = "sup-s3cret-Q9"
    port = private_redis.free_port()
    redis_proc = private_redis.start(port, tmp_path, password)
    broker = f"redis://:{password}@127.0.0.1:{port}/0"
    (tmp_path / "logs").mkdir()
    ledger = Ledger(tmp_path / "ledger.txt")
    spec = DeploySpec(app=APP, workers=(QueueWorker("default", 1),), name="sec",
                      directory=str(ROOT), venv=sys.prefix, log_dir=str(tmp_path / "logs"),
                      user=getpass.getuser(), env=(("CONVEYOR_BROKER_URL", broker),),
                      env_file=str(tmp_path / "secrets.env"))
    conf = tmp_path / "supervisord.conf"
    conf.write_text(supervisord_main_config(spec, str(tmp_path), str(tmp_path / "sd.pid"),
                                            str(tmp_path / "sd.log"), str(tmp_path / "sd.sock")))
    fd = os.open(tmp_path / "secrets.env", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (env_file_text(spec) or "").encode())
    os.close(fd)
    assert password not in conf.read_text()
    env = worker_env("sqlite:///nowhere-else.db", ledger.path, worker_heartbeat_interval=0.5)
    del env["CONVEYOR_BROKER_URL"]  # only the file has it
    sup = Supervisor(conf, env)
    try:
        wait_for(lambda: sup.status().get("sec:sec-worker-default") == "RUNNING", 60,
                 "the worker to be RUNNING", interval=0.5)
        client = Conveyor("client", broker=broker, set_as_current=False)
        assert client.send_task(WORK, [0.0], queue="default").get(timeout=60) > 0
        client.close()
        argv = Path(f"/proc/{sup.pid('sec:sec-worker-default')}/cmdline").read_bytes()
        assert password.encode() not in argv and b"--env-file" in argv
    finally:
        sup.close()
        redis_proc.kill()
        redis_proc.wait(10)
