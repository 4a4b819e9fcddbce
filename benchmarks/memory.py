"""Memory of a Conveyor worker tree, per process, and what a child imports.

    python -m benchmarks.memory [--n 2000] [--repeat 2] [--tree base=/tmp/base]

For issue 22's target 5 (worker RSS per process at most Huey's), lighter than
the full harness and measured the same way: the harness's venv and worker
command (``conveyor -A benchmarks.apps.conveyor_app worker -P prefork -c 2 -l
WARNING``, Redis broker, results in Redis), on ``BENCH_REDIS_HOST`` /
``BENCH_REDIS_PORT`` (a Redis of your own: its database is emptied).  Each run

1. starts the worker and sends ``bench.modules`` probes until both children
   have answered (that is also the wait until ready): each answer is the
   child's pid and ``sorted(sys.modules)``;
2. reads ``psutil.Process.memory_full_info()`` (RSS, USS, PSS) of every
   process of the tree;
3. queues ``--n`` INCR tasks, samples the tree's RSS every 0.1 s until they
   are done (the harness's peak: the largest total over the tree, divided by
   its processes) and reads the tree again.

The RSS is also split: its anonymous part (``smaps_rollup``) is the heap,
which a forked child counts in full (every page it shares with its parent);
the rest is file pages (the interpreter, extension modules) it has touched.

``--tree label=path`` runs another checkout's ``conveyor`` (the code before a
change) interleaved with this one, so both are measured in the same minutes;
``--huey`` runs the harness's Huey worker (``huey_consumer ... -k process -w
2``, its venv, the same probe and INCR tasks) interleaved too, the peer of
target 5; ``--modules`` prints a child's module list; ``--no-cli`` starts the
same worker from Python (``Worker(app, pool="prefork", concurrency=2).run()``),
without the command line, to show what the CLI (click) costs each process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 2**20

# --no-cli: the same worker started from Python, without the command line
# (so without click): what the CLI costs each process.
NO_CLI = ("import logging; logging.basicConfig(level=logging.WARNING); "
          "from benchmarks.apps.conveyor_app import app; from conveyor.worker import Worker; "
          "Worker(app, pool='prefork', concurrency={procs}).run()")


# -- the client half, run in the system's venv ---------------------------------
def probe(children: int, timeout: float, huey: bool = False) -> None:
    """Ask each child for its imports; print ``{pid: modules}`` as JSON (and on
    stderr where its ``conveyor`` came from, to show which tree ran)."""
    seen: dict[int, list[str]] = {}
    where: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < children and time.monotonic() < deadline:
        left = max(1.0, deadline - time.monotonic())
        # Several at once: one idle child takes them all only if the other is not up yet.
        if huey:
            from benchmarks.apps import huey_app

            answers = [r.get(blocking=True, timeout=left)
                       for r in [huey_app.modules() for _ in range(4 * children)]]
        else:
            from benchmarks.apps import conveyor_app

            answers = [r.get(timeout=left)
                       for r in [conveyor_app.modules.delay() for _ in range(4 * children)]]
        for pid, modules, path in answers:
            seen[int(pid)] = list(modules)
            where.add(path)
    print(f"children's {'huey' if huey else 'conveyor'}: {', '.join(sorted(where))}",
          file=sys.stderr)
    print(json.dumps(seen))


# -- the orchestrator half -----------------------------------------------------
def _memory(proc: Any) -> dict[str, float]:
    info = proc.memory_full_info()
    return {"rss": info.rss / MIB, "uss": info.uss / MIB, "pss": info.pss / MIB,
            "anon": _anonymous(proc.pid)}


def _anonymous(pid: int) -> float:
    """The anonymous part of the RSS (the heap, shared with the parent or not);
    the rest is file pages (the interpreter, extension modules)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _snapshot(workers: Any) -> dict[str, dict[str, float]]:
    """Memory per process, keyed ``supervisor`` and ``child <pid>``."""
    import psutil

    out: dict[str, dict[str, float]] = {}
    root_pids = set(workers.pids())
    for proc in workers.tree():
        with contextlib.suppress(psutil.Error):
            role = "supervisor" if proc.pid in root_pids else f"child {proc.pid}"
            out[role] = _memory(proc)
    return out


def _wait_counter(bench: Any, n: int, timeout: float) -> None:
    from benchmarks import common

    deadline = time.monotonic() + timeout
    while common.counter_value(bench.redis) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} INCR tasks not done within {timeout:.0f}s")
        time.sleep(0.05)


def run_one(bench: Any, tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.systems.base import ROOT

    # Only the tree's ``conveyor`` comes from the tree (the benchmark apps are
    # this checkout's), and ahead of the editable install: ``python -m`` puts
    # its working directory first on sys.path, so that is a directory holding
    # just a link to the package.
    with tempfile.TemporaryDirectory(prefix="conveyor-memory-") as place:
        os.symlink(tree / "conveyor", Path(place) / "conveyor")
        env = dict(bench.env, PYTHONPATH=f"{place}:{ROOT}")
        return _measure(bench, env, Path(place), args)


def run_huey(bench: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The harness's Huey worker, measured as Conveyor's is."""
    from benchmarks.systems.base import ROOT

    return _measure(bench, bench.env, ROOT, args, huey=True)


def _measure(bench: Any, env: dict[str, str], cwd: Path,
             args: argparse.Namespace, huey: bool = False) -> dict[str, Any]:
    from benchmarks import common

    bench.reset()
    commands = bench.system.worker_commands(bench.python, args.procs)
    if args.no_cli and not huey:
        commands = [[str(bench.python), "-c", NO_CLI.format(procs=args.procs)]]
    workers = common.start_workers(commands, env, cwd, bench.log)
    try:
        probe_args = ["--probe", str(args.procs)] + (["--probe-huey"] if huey else [])
        done = subprocess.run([str(bench.python), "-m", "benchmarks.memory", *probe_args],
                              env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"probe failed: {done.stderr.strip()[-2000:]}")
        modules = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"[memory] {done.stderr.strip().splitlines()[-1]}", file=sys.stderr, flush=True)
        idle = _snapshot(workers)
        subprocess.run([str(bench.python), "-m", "benchmarks.client", bench.system.name,
                        "preload", "--n", str(args.n)], env=env, cwd=cwd, check=True,
                       capture_output=True, timeout=300)
        with common.RssSampler(workers) as sampler:
            _wait_counter(bench, args.n, 300)
        after = _snapshot(workers)
    finally:
        workers.stop()
        bench.reset()
    peak = sampler.peak
    return {"modules": modules, "idle": idle, "after": after,
            "peak_total": peak.total / MIB, "peak_processes": peak.processes}


def _by_role(snapshot: dict[str, dict[str, float]], role: str, key: str) -> float:
    values = [m[key] for name, m in snapshot.items() if name.startswith(role)]
    return statistics.mean(values) if values else float("nan")


def report(label: str, runs: list[dict[str, Any]], show_modules: bool) -> str:
    rows = []
    for when in ("idle", "after"):
        for role in ("supervisor", "child"):
            cells = []
            for key in ("rss", "anon", "uss", "pss"):
                values = [_by_role(run[when], role, key) for run in runs]
                cells.append("-".join(sorted({f"{v:.1f}" for v in (min(values), max(values))},
                                             key=float)))
            rows.append(f"| {label} | {role} | {when} | " + " | ".join(cells) + " |")
    per_process = [run["peak_total"] / max(1, run["peak_processes"]) for run in runs]
    children = [mods for run in runs for mods in run["modules"].values()]
    package = "huey" if label == "huey" else "conveyor"
    ours = sorted(m for m in children[0] if m == package or m.startswith(f"{package}."))
    out = "\n".join(rows) + "\n"
    out += (f"{label}: peak per process (harness's way) "
            + ", ".join(f"{v:.1f}" for v in per_process) + " MiB; a child holds "
            + f"{len(children[0])} modules, {len(ours)} of them {package}'s\n")
    if show_modules:
        out += f"{label} child modules:\n  " + " ".join(children[0]) + "\n"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2_000, help="INCR tasks per run")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="another checkout's conveyor, run interleaved with this one")
    parser.add_argument("--huey", action="store_true",
                        help="also Huey's worker (the harness's command), interleaved")
    parser.add_argument("--modules", action="store_true", help="print a child's module list")
    parser.add_argument("--no-cli", action="store_true",
                        help="start the worker from Python instead of the conveyor command")
    parser.add_argument("--json", type=Path, help="write every run's numbers and modules here")
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-huey", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe, timeout=60, huey=args.probe_huey)
        return

    from benchmarks import systems
    from benchmarks.run import Bench, Plan
    from benchmarks.systems.base import ROOT

    bench = Bench(systems.get("conveyor-redis")(), Plan())
    trees = [("this", ROOT)] + [(spec.split("=", 1)[0], Path(spec.split("=", 1)[1]))
                                for spec in args.tree]
    for _, tree in trees[1:]:
        # As the harness does for this checkout (envs.compile_sources): without
        # bytecode (PYTHONDONTWRITEBYTECODE) every start compiles the tree's
        # modules again, and the compiler's garbage is measured with it (~1.3 MiB).
        subprocess.run([str(bench.python), "-m", "compileall", "-q", "-j", "0",
                        str(tree / "conveyor")], check=True)
    huey = Bench(systems.get("huey")(), Plan()) if args.huey else None
    labels = [label for label, _ in trees] + (["huey"] if huey else [])
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for index in range(args.repeat):
        for label, tree in trees:
            print(f"[memory] {label} run {index + 1}/{args.repeat}", file=sys.stderr, flush=True)
            runs[label].append(run_one(bench, tree, args))
        if huey is not None:
            print(f"[memory] huey run {index + 1}/{args.repeat}", file=sys.stderr, flush=True)
            runs["huey"].append(run_huey(huey, args))
    out = ("| tree | process | when | RSS MiB | of it anonymous | USS MiB | PSS MiB |\n"
           "|---|---|---|---:|---:|---:|---:|\n")
    for label in labels:
        out += report(label, runs[label], args.modules)
    if len(trees) > 1:
        base = set(next(iter(runs[trees[1][0]][0]["modules"].values())))
        new = set(next(iter(runs["this"][0]["modules"].values())))
        out += f"only in {trees[1][0]}'s child: " + " ".join(sorted(base - new)) + "\n"
        out += "only in this child: " + " ".join(sorted(new - base)) + "\n"
    if huey is not None:
        theirs = set(next(iter(runs["huey"][0]["modules"].values())))
        new = set(next(iter(runs["this"][0]["modules"].values())))
        out += "only in Huey's child: " + " ".join(sorted(theirs - new)) + "\n"
        out += ("only in this child, besides conveyor's: "
                + " ".join(sorted(m for m in new - theirs if not m.startswith("conveyor")))
                + "\n")
    sys.stdout.write(out)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
