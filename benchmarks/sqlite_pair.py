"""Conveyor's SQLite broker beside Huey's SQLite storage, 2 worker processes each.

A small, self-contained comparison for work on the SQLite path (issue 22,
target 6), lighter than the full harness: for each system, in turn and
repeated, it

1. enqueues ``--n`` INCR tasks into a fresh SQLite file (no worker running),
2. starts the worker (``conveyor worker -P prefork -c 2`` / ``huey_consumer
   -k process -w 2 -d 0.001``) and times from the first INCR to the last
   (``steady``) and from the worker's start (``total``), adding up the
   worker tree's CPU time per task,
3. with the queue drained, measures ``--samples`` round trips
   (``echo.delay(i).get()``; Huey's client polls its result every 1 ms, as the
   harness's does) and reports the p50.

The counter is a Redis key (``--redis``, a Redis of your own).  ``--tree``
runs Conveyor from another checkout (the code before a change) beside this
one, so old and new are measured in the same minutes::

    python -m benchmarks.sqlite_pair --redis redis://127.0.0.1:6403/2 \\
        --systems conveyor,huey --tree old=/tmp/base --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HUEY_PYTHON = ROOT / "benchmarks" / ".envs" / "huey" / "bin" / "python"
KEY = "bench:counter"


# -- the client half, run inside each system's interpreter ---------------------
def client(system: str, op: str, n: int) -> None:
    if system == "conveyor":
        from benchmarks.apps import conveyor_app as conveyor_tasks

        if op == "preload":
            for start in range(0, n, 10_000):
                conveyor_tasks.app.send_many("bench.incr", [()] * min(10_000, n - start))
            return
        times = []
        for i in range(n):
            began = time.perf_counter()
            assert conveyor_tasks.echo.delay(i).get(timeout=30) == i
            times.append(time.perf_counter() - began)
        print(json.dumps(times))
        return
    from benchmarks.apps import huey_sqlite_app as huey_tasks

    if op == "preload":
        for _ in range(n):
            huey_tasks.incr()
        return
    times = []
    for i in range(n):
        began = time.perf_counter()
        result = huey_tasks.echo(i)
        while (got := result.get()) is None:
            time.sleep(0.001)
        assert got == i
        times.append(time.perf_counter() - began)
    print(json.dumps(times))


# -- the driver ----------------------------------------------------------------
def _tree_cpu(root: Any) -> float:
    import psutil

    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _schedstat(root: Any) -> dict[int, tuple[float, float]]:
    """Per worker process: seconds on a CPU and seconds runnable but waiting for one."""
    out = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            with open(f"/proc/{proc.pid}/schedstat") as f:
                on_cpu, waiting, _ = f.read().split()
        except OSError:
            continue
        out[proc.pid] = (int(on_cpu) / 1e9, int(waiting) / 1e9)
    return out


def _asleep(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]],
            seconds: float) -> float:
    """Mean seconds the two busiest worker processes (the ones running tasks) spent
    neither on a CPU nor waiting for one: on locks, sockets, pipes and their own
    sleeps.  Unlike the rate, a machine busy with other work does not add to it."""
    deltas = sorted(((after[pid][0] - before[pid][0], after[pid][1] - before[pid][1])
                     for pid in after if pid in before), reverse=True)[:2]
    return sum(seconds - on_cpu - waiting for on_cpu, waiting in deltas) / max(1, len(deltas))


def run_one(system: str, tree: Path, args: argparse.Namespace, r: Any) -> dict[str, Any]:
    import psutil

    workdir = Path(tempfile.mkdtemp(prefix="sqlite-pair-"))
    db = workdir / "bench.db"
    env = dict(os.environ, PYTHONPATH=f"{tree}:{ROOT}", BENCH_REDIS_URL=args.redis,
               BENCH_CONVEYOR_BROKER=f"sqlite:///{db}", BENCH_HUEY_SQLITE=str(db))
    env.pop("BENCH_CONVEYOR_BACKEND", None)
    python = sys.executable if system == "conveyor" else str(HUEY_PYTHON)
    r.delete(KEY)
    me = [python, str(Path(__file__).resolve()), "client", system]
    subprocess.run([*me, "preload", str(args.n)], env=env, check=True, cwd=workdir)
    if system == "conveyor":
        command = [python, "-m", "conveyor", "-A", "benchmarks.apps.conveyor_app", "worker",
                   "-P", "prefork", "-c", "2", "-l", "WARNING"]
    else:
        command = [str(HUEY_PYTHON.parent / "huey_consumer"),
                   "benchmarks.apps.huey_sqlite_app.huey", "-k", "process", "-w", "2", "-q",
                   "-d", "0.001"]
    started = time.perf_counter()
    worker = subprocess.Popen(command, env=env, cwd=workdir)
    proc = psutil.Process(worker.pid)
    first = None
    try:
        deadline = started + 600
        while time.perf_counter() < deadline:
            count = int(r.get(KEY) or 0)
            now = time.perf_counter()
            if count and first is None:
                first, at_first, sched = now, count, _schedstat(proc)
            if count >= args.n:
                break
            time.sleep(0.005)
        done = time.perf_counter()
        cpu = _tree_cpu(proc)
        asleep = _asleep(sched, _schedstat(proc), done - first) if first else 0.0
        out = subprocess.run([*me, "latency", str(args.samples)], env=env, check=True,
                             cwd=workdir, capture_output=True, text=True)
        times = json.loads(out.stdout)[args.samples // 10:]
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert first is not None
    return {
        "total": args.n / (done - started),
        "steady": (args.n - at_first) / max(1e-9, done - first),
        "cpu_us": cpu / args.n * 1e6,
        # per task a worker process ran (each ran about half of them)
        "asleep_us": asleep / max(1, args.n - at_first) * 2 * 1e6,
        "p50_ms": statistics.median(times) * 1000,
        "p90_ms": statistics.quantiles(times, n=10)[-1] * 1000,
    }


def driver(args: argparse.Namespace) -> None:
    import redis

    if "huey" in args.systems.split(",") and not HUEY_PYTHON.exists():
        raise SystemExit(f"{HUEY_PYTHON} is missing: python -c 'from benchmarks.envs import "
                         "ensure_venv; ensure_venv(\"huey\", [\"huey==3.5.4\", "
                         "\"redis==8.1.0\"])'")
    r = redis.Redis.from_url(args.redis)
    runs: list[tuple[str, Path]] = []
    for system in args.systems.split(","):
        if system == "conveyor":
            runs.append(("conveyor", ROOT))
            for spec in args.tree:
                label, _, path = spec.partition("=")
                runs.append((f"conveyor:{label}", Path(path)))
        else:
            runs.append((system, ROOT))
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in runs}
    for round_ in range(args.repeat):
        for label, tree in runs:
            got = run_one(label.split(":")[0], tree, args, r)
            results[label].append(got)
            print(f"[{round_}] {label:16} steady {got['steady']:7,.0f}/s  total "
                  f"{got['total']:7,.0f}/s  cpu {got['cpu_us']:5.0f} us/task  "
                  f"asleep {got['asleep_us']:5.0f} us/task  "
                  f"p50 {got['p50_ms']:.2f} ms  p90 {got['p90_ms']:.2f} ms  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    print("medians:")
    for label, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        print(f"  {label:16} steady {med['steady']:7,.0f}/s  total {med['total']:7,.0f}/s  "
              f"cpu {med['cpu_us']:5.0f} us/task  asleep {med['asleep_us']:5.0f} us/task  "
              f"p50 {med['p50_ms']:.2f} ms")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True, help="Redis URL for the INCR counter")
    parser.add_argument("--systems", default="conveyor,huey")
    parser.add_argument("--tree", action="append", default=[],
                        help="label=path of another Conveyor checkout to run beside this one")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=1)
    driver(parser.parse_args())


if __name__ == "__main__":
    main()
