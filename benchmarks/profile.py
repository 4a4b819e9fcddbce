"""Profile a Conveyor worker while it drains INCR tasks (py-spy, all processes).

    python -m benchmarks.profile [--system conveyor-redis] [--n 20000] [--seconds 8] [--gil]

Installs py-spy (pinned) into the system's venv, queues ``n`` INCR tasks,
starts the usual 2-process worker, records every process of the worker tree
with ``py-spy record --subprocesses --format raw`` and prints where the
samples fall: per process, by leaf function (self) and by function anywhere
on the stack (inclusive).  Raw stacks go to ``benchmarks/results/raw/``.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common, systems
from benchmarks.run import RAW, Bench, Plan
from benchmarks.systems.base import ROOT

PY_SPY = "py-spy==0.4.3"


def aggregate(path: Path, top: int = 40) -> str:
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    procs: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        owner = [f for f in frames if f.startswith("process ")] or frames[:1]
        procs[owner[-1][:70]] += n  # a child's stack starts with its parent's frames
        leaf[frames[-1]] += n
        for frame in {re.sub(r":\d+\)", ")", f) for f in frames}:
            inclusive[frame] += n
    out = [f"{total} samples", "", "per process:"]
    out += [f"{n:7d} {100 * n / total:5.1f}%  {p}" for p, n in procs.most_common()]
    out += ["", "self (leaf frames):"]
    out += [f"{n:7d} {100 * n / total:5.1f}%  {f[:140]}" for f, n in leaf.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"{n:7d} {100 * n / total:5.1f}%  {f[:140]}" for f, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="conveyor-redis")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--gil", action="store_true",
                        help="only samples of the thread holding the GIL (closer to CPU "
                             "time: a thread blocked in a socket call is left out)")
    parser.add_argument("--top", type=int, default=40, help="rows per listing")
    args = parser.parse_args(argv)
    bench = Bench(systems.get(args.system)(), Plan())
    subprocess.run([str(bench.python), "-m", "pip", "install", "-q", PY_SPY], check=True)
    py_spy = bench.python.parent / "py-spy"
    RAW.mkdir(parents=True, exist_ok=True)
    raw = RAW / f"profile-{args.system}.raw"
    bench.reset()
    bench.client("preload", n=args.n)
    commands = bench.system.worker_commands(bench.python, 2)
    workers = common.start_workers(commands, bench.env, ROOT, bench.log)
    try:
        time.sleep(0.5)  # let the worker import its app before sampling starts
        subprocess.run([str(py_spy), "record", "--pid", str(workers.pids()[0]),
                        "--subprocesses", "--rate", str(args.rate), "--format", "raw",
                        "--nonblocking", "-d", str(args.seconds), "-o", str(raw),
                        *(["--gil"] if args.gil else [])],
                       check=True, capture_output=True)
    finally:
        workers.stop()
        bench.reset()
    report = aggregate(raw, args.top)
    (RAW / f"profile-{args.system}.txt").write_text(report)
    sys.stdout.write(report)


if __name__ == "__main__":
    main()
