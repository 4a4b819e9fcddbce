"""Starting and inspecting real worker processes for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Ledger:
    """Reads the lines tasks in tests/integration/worker_app.py append."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, kind: str | None = None) -> list[tuple[str, str, int, int]]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        # A line without its newline is still being written (or its writer was
        # killed mid-write): a full run once read one as two fields.  Not counted.
        complete = text[:text.rfind("\n") + 1]
        out = []
        for line in complete.splitlines():
            event, task_id, attempt, pid = line.split()
            if kind is None or event == kind:
                out.append((event, task_id, int(attempt), int(pid)))
        return out

    def count(self, kind: str) -> Counter[str]:
        return Counter(task_id for _, task_id, _, _ in self.events(kind))


def worker_env(broker_url: str, ledger: Path, **settings: object) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CONVEYOR_BROKER_URL": broker_url,
        "LEDGER": str(ledger),
        "PYTHONPATH": str(ROOT),
    })
    for key, value in settings.items():
        env[f"CONVEYOR_{key.upper()}"] = str(value)
    return env


def start_worker(env: dict[str, str], *args: str,
                 log: Path | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "conveyor", "-A", "tests.integration.worker_app", "worker",
           "-l", "INFO", *args]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by Popen
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> None:
    """Bounded poll: return as soon as ``condition()`` is truthy, fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def children_of(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)
