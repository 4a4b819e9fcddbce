"""Shared plumbing for the orchestrator: Redis, worker processes, RSS, statistics.

The orchestrator runs in the project's own virtualenv (it needs ``redis`` and
``psutil``); everything a system runs (its workers and the client that sends
its tasks) runs in that system's virtualenv, as subprocesses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
COUNTER_KEY = "bench:counter"


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def redis_client(db: int) -> redis.Redis:
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)


def counter_value(client: redis.Redis) -> int:
    raw = client.get(COUNTER_KEY)
    return int(raw) if raw is not None else 0


# -- worker processes ---------------------------------------------------------
@dataclass
class Workers:
    """Worker processes started for one system; each in its own session."""

    procs: list[subprocess.Popen[bytes]]
    started: float
    log_path: Path

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def tree(self) -> list[psutil.Process]:
        """Every process of the workers: the roots and all their descendants."""
        out: list[psutil.Process] = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                out.append(root)
                out.extend(root.children(recursive=True))
        return out

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the worker tree has used so far.

        A finished child's time shows up in its parent's ``children_*``
        once reaped (RQ's work horses), a live one's in its own entry.
        """
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM each worker's process group, then SIGKILL what is left."""
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            _signal_group(proc, signal.SIGKILL)  # stragglers, grandchildren included
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


class Servers:
    """The server processes listening on some loopback ports, with their children
    (PostgreSQL's backends, RabbitMQ's helpers): whose CPU a drain costs
    besides the workers'.  A backend that exits mid-drain takes its time
    with it, so the figure is a lower bound where connections come and go."""

    def __init__(self, ports: Sequence[int]) -> None:
        wanted = set(ports)
        self.roots = sorted({c.pid for c in psutil.net_connections(kind="tcp")
                             if c.pid and c.status == psutil.CONN_LISTEN
                             and c.laddr and c.laddr.port in wanted})

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.roots:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for proc in (root, *root.children(recursive=True)):
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        total += t.user + t.system
        return total


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # Each worker was started with start_new_session=True, so its process
    # group id is its own pid: this reaches only processes this harness started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def start_workers(commands: Sequence[Sequence[str]], env: dict[str, str], cwd: Path,
                  log_path: Path) -> Workers:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the children, closed by the OS
    started = time.perf_counter()
    procs = [
        subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
        for cmd in commands
    ]
    log.close()
    return Workers(procs, started, log_path)


# -- memory -------------------------------------------------------------------
@dataclass
class RssPeak:
    """Peak resident memory of a process tree, sampled while it works."""

    total: int = 0            # bytes, the largest sum over the tree at one instant
    processes: int = 0        # how many processes the tree had at that instant
    largest: int = 0          # bytes, the largest single process seen
    samples: int = 0


class RssSampler:
    """Samples a worker tree's RSS every ``interval`` seconds in a thread."""

    def __init__(self, workers: Workers, interval: float = 0.1) -> None:
        self.workers = workers
        self.interval = interval
        self.peak = RssPeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        sizes = []
        for proc in self.workers.tree():
            with contextlib.suppress(psutil.Error):
                sizes.append(proc.memory_info().rss)
        if not sizes:
            return
        self.peak.samples += 1
        self.peak.largest = max(self.peak.largest, *sizes)
        if sum(sizes) > self.peak.total:
            self.peak.total = sum(sizes)
            self.peak.processes = len(sizes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


# -- statistics ---------------------------------------------------------------
@dataclass
class Summary:
    median: float
    min: float
    max: float
    runs: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"median": self.median, "min": self.min, "max": self.max, "runs": self.runs}


def summarize(values: Sequence[float]) -> Summary | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Summary(statistics.median(vals), min(vals), max(vals), list(vals))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 500 is the 495th)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]
