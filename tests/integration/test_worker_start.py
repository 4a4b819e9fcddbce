"""``conveyor worker`` parses its options with click, then starts the worker
in a fresh interpreter without it (``conveyor._worker_start``): a prefork
child, a fork of that process, then holds none of the command line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor import Conveyor
from conveyor._cli import main

from .processes import ROOT, start_worker, stop, worker_env

APP = "tests.integration.worker_app"


@pytest.fixture
def url(redis_url: str) -> str:
    return redis_url


def test_a_prefork_child_of_the_command_holds_no_click(client: Conveyor, url: str,
                                                       tmp_path: Path) -> None:
    env = worker_env(url, tmp_path / "ledger.txt")
    default = client.conf.task_default_queue
    proc = start_worker(env, "-P", "prefork", "-c", "1", "-Q", f"{default},extra",
                        log=tmp_path / "worker.log")
    try:
        result = client.send_task(f"{APP}.loaded", ["click"])
        assert result.get(timeout=30) == []
        ours = client.send_task(f"{APP}.loaded", ["conveyor._cli"]).get(timeout=30)
        assert ours == []
        # The options reached the worker through the exec: -Q's two queues.
        extra = client.send_task(f"{APP}.loaded", ["click"], queue="extra")
        assert extra.get(timeout=30) == []
    finally:
        stop(proc, signal.SIGTERM, timeout=30)
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert "_CONVEYOR_WORKER_PLAN" not in (tmp_path / "worker.log").read_text()


def test_a_usage_mistake_after_the_exec_reads_as_clicks(url: str, tmp_path: Path) -> None:
    """``-A`` naming a module without an app is found after the exec: the
    message and exit status are those of the same mistake in-process."""
    args = ["-A", "tests.integration.processes", "worker", "-c", "1"]
    done = subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=ROOT,
                          env=worker_env(url, tmp_path / "ledger.txt"), capture_output=True,
                          text=True, timeout=60)
    inline = CliRunner().invoke(main, args, prog_name="python -m conveyor")
    assert done.returncode == inline.exit_code == 2
    assert "no Conveyor app found in tests.integration.processes" in done.stderr
    assert done.stderr.strip() == inline.output.strip()
