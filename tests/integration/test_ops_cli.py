"""Operator commands through the real CLI: healthcheck, report, deploy."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click

from .processes import ROOT, start_worker, stop, wait_for, worker_env

APP = "tests.integration.worker_app"


def conveyor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", "-A", APP, *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_healthcheck_follows_the_worker_heartbeat(tmp_path: Path) -> None:
    env = worker_env(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "ledger",
                     worker_heartbeat_interval=0.3)
    assert conveyor(env, "healthcheck").returncode == 1, "no worker yet"
    worker = start_worker(env, "-P", "prefork", "-c", "1")
    try:
        wait_for(lambda: conveyor(env, "healthcheck").returncode == 0, 30, "a healthy worker",
                 interval=0.3)
        assert "heartbeating" in conveyor(env, "healthcheck").stdout
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        stop(worker, signal.SIGKILL)
    # Its heartbeat goes stale after 5 intervals; the probe must then fail.
    wait_for(lambda: conveyor(env, "healthcheck").returncode == 1, 30, "the probe to fail",
             interval=0.3)


def test_healthcheck_fails_clearly_when_the_broker_is_down(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = worker_env(f"redis://127.0.0.1:{port}/0", tmp_path / "ledger")
    result = conveyor(env, "healthcheck")
    assert result.returncode == 1
    assert f"redis://127.0.0.1:{port}/0 does not answer" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_report_masks_secrets(tmp_path: Path) -> None:
    env = worker_env("redis://app:s3cret@127.0.0.1:6379/0", tmp_path / "ledger")
    out = conveyor(env, "report").stdout
    assert "broker_url = 'redis://app:********@127.0.0.1:6379/0'" in out
    assert "s3cret" not in out


def test_deploy_systemd_writes_unit_files(tmp_path: Path) -> None:
    env = worker_env(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "ledger")
    out = tmp_path / "units"
    result = conveyor(env, "deploy", "systemd", "--queue", "default:2", "--beat",
                      "--user", "svc", "--directory", str(tmp_path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["conveyor-beat.service", "conveyor-worker-default.service",
                     "conveyor.target"]
    unit = (out / "conveyor-worker-default.service").read_text()
    assert "KillSignal=SIGTERM" in unit and "-n default@%%h" in unit
    assert "TimeoutStopSec=70" in unit


def test_deploy_rejects_bad_queue_specs(tmp_path: Path) -> None:
    env = worker_env(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "ledger")
    result = conveyor(env, "deploy", "supervisor", "--queue", "default:zero")
    assert result.returncode == 2
    assert "default:zero" in result.stderr


def test_deploy_supervisor_creates_its_log_directory_and_says_so(tmp_path: Path) -> None:
    """Issue 16: supervisord refuses to start a program whose log folder is missing
    ("The directory named as part of the path ... does not exist")."""
    env = worker_env(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "ledger")
    logs = tmp_path / "var" / "log" / "conveyor"
    result = conveyor(env, "deploy", "supervisor", "--queue", "default:1", "--allow-root",
                      "--directory", str(tmp_path), "--log-dir", str(logs))
    assert result.returncode == 0, result.stderr
    assert logs.is_dir()
    assert f"created log directory {logs}" in result.stderr
    assert f"stdout_logfile={logs}/" in result.stdout


def test_every_deploy_option_says_what_it_does() -> None:
    from conveyor._ops_cli import deploy_command

    undocumented = [p.name for p in deploy_command.params
                    if isinstance(p, click.Option) and not p.help]
    assert undocumented == []
