"""What a chord of N costs per header task on Redis: commands, scripts, CPU.

Wall time on a shared, loaded machine swings 2-3x between identical runs;
these counts do not, so two checkouts can be compared in the same minutes
(docs/performance.md, "Round two, third pass: chord joins"; made with this).  For one
checkout (``tree``) it starts the harness's worker (``-P prefork -c 2``) on
a Redis of your own, runs two warm-up chords, then ``--rounds`` chords of
``--n`` ``echo`` headers and a ``collect`` body, and prints per header task:
Redis commands and script calls (``INFO commandstats`` after ``CONFIG
RESETSTAT``; commands run inside scripts count too), the worker tree's CPU
and Redis's CPU.  Alternate two trees to compare them::

    python -m benchmarks.chord_counts /path/to/old --redis redis://127.0.0.1:6404/0
    python -m benchmarks.chord_counts /path/to/new --redis redis://127.0.0.1:6404/0

It flushes the Redis database it is given.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import psutil
import redis


def _tree_cpu(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(t.user + t.system
               for t in (p.cpu_times() for p in [root, *root.children(recursive=True)]))


def _redis_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chord_counts",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", help="the checkout whose conveyor runs (client and worker)")
    parser.add_argument("--redis", required=True, help="a Redis database of your own")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ["BENCH_CONVEYOR_BROKER"] = args.redis
    sys.path.insert(0, args.tree)
    import conveyor
    from benchmarks.apps.conveyor_app import collect, echo  # the tree's app

    if not conveyor.__file__ or not conveyor.__file__.startswith(args.tree):
        raise SystemExit(f"imported {conveyor.__file__}, not the tree's conveyor")
    client = redis.Redis.from_url(args.redis)
    client.flushdb()
    env = dict(os.environ, PYTHONPATH=args.tree)
    worker = subprocess.Popen([sys.executable, "-m", "conveyor", "-A",
                               "benchmarks.apps.conveyor_app", "worker", "-P", "prefork",
                               "-c", "2", "-l", "WARNING"], env=env, cwd=args.tree)

    def chord_of(n: int) -> Any:
        return conveyor.chord([echo.s(i) for i in range(n)])(collect.s()).get(timeout=120)

    try:
        for _ in range(2):
            chord_of(args.n)
        for _ in range(args.rounds):
            time.sleep(0.3)  # leave the last chord's acks and events behind
            client.config_resetstat()
            cpu, redis_cpu, start = _tree_cpu(worker.pid), _redis_cpu(client), time.perf_counter()
            assert chord_of(args.n) == args.n
            wall = time.perf_counter() - start
            time.sleep(0.2)  # the supervisor's last acks belong to this chord
            cpu, redis_cpu = _tree_cpu(worker.pid) - cpu, _redis_cpu(client) - redis_cpu
            calls = {name.split("_", 1)[1]: stats["calls"]
                     for name, stats in client.info("commandstats").items()}
            scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
            print(f"wall {wall:.3f} s  worker CPU {1e6 * cpu / args.n:.0f} µs  "
                  f"Redis CPU {1e6 * redis_cpu / args.n:.0f} µs  "
                  f"commands {sum(calls.values()) / args.n:.2f}  scripts {scripts / args.n:.2f}"
                  "  (per header task)", flush=True)
    finally:
        worker.terminate()
        worker.wait(20)


if __name__ == "__main__":
    main()
