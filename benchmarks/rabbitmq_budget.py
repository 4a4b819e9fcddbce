"""Where a task's CPU goes on RabbitMQ, and what issue 20's "3x Celery" would need.

    python -m benchmarks.rabbitmq_budget [--rounds 3] [--window 6]

Not a test and not the side-by-side report (``make bench-rabbitmq``): a
steady-state measure of the same drain, taken apart.  Each variant, in
interleaved rounds, gets a backlog of INCR tasks and the usual 2-process
worker; the first 3,000 tasks (start-up) are skipped, then for ``window``
seconds (or until the backlog nearly runs out) it counts tasks, the CPU of
the worker tree and of the servers (RabbitMQ, the benchmark Redis), and the
machine's idle share from ``/proc/stat``.  Variants:

* Conveyor on classic queues, as in the report;
* the same with ``events_enabled=False``, then also ``task_ignore_result=True``;
* the bare pika floor with Conveyor's window of 4 per process (the report's
  floor prefetches 100);
* Celery's default prefork worker.

The report (``results/rabbitmq-budget.md``) gives the medians and the
arithmetic of the target: three times Celery's rate, and the CPU per task
(worker and servers) that rate leaves at the busy share Conveyor reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, fields

from benchmarks import common, systems
from benchmarks.run import RESULTS, Bench, Plan
from benchmarks.systems.base import ROOT

SKIP = 3_000  # tasks left to start-up before the window opens


@dataclass(frozen=True)
class Variant:
    label: str
    system: str
    backlog: int
    env: tuple[tuple[str, str], ...] = ()


VARIANTS = (
    Variant("Conveyor (classic queues)", "conveyor-amqp-classic", 60_000),
    Variant("Conveyor, events off", "conveyor-amqp-classic", 60_000,
            (("BENCH_EVENTS_OFF", "1"),)),
    Variant("Conveyor, results and events off", "conveyor-amqp-classic", 70_000,
            (("BENCH_EVENTS_OFF", "1"), ("BENCH_IGNORE_RESULT", "1"))),
    Variant("Floor (bare pika), prefetch 4", "floor-amqp", 120_000,
            (("BENCH_FLOOR_PREFETCH", "4"),)),
    Variant("Celery", "celery-amqp", 30_000),
)
#: The variables the variants set, cleared before each so none leaks into the next.
_SWITCHES = {key for variant in VARIANTS for key, _ in variant.env}


@dataclass
class Window:
    rate: float  # tasks/s
    worker_us: float  # worker tree CPU per task
    server_us: float  # RabbitMQ and Redis CPU per task
    busy: float  # share of the machine's CPU time not idle, 0-1


def _idle() -> tuple[int, int]:
    """(idle + iowait, all) jiffies since boot, all CPUs."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def measure(bench: Bench, backlog: int, window: float) -> Window:
    """One steady-state window of a fresh worker draining ``backlog`` INCR tasks."""
    bench.reset()
    bench.client("preload", n=backlog)
    bench.system.preloaded()
    servers = common.Servers(bench.system.server_ports())
    workers = common.start_workers(bench.system.worker_commands(bench.python, 2), bench.env,
                                   ROOT, bench.log)
    try:
        deadline = time.monotonic() + 120
        while common.counter_value(bench.redis) < SKIP:
            if time.monotonic() > deadline or not workers.alive():
                raise RuntimeError(f"{bench.system.name}: no start; see {bench.log}")
            time.sleep(0.005)
        start = (time.perf_counter(), common.counter_value(bench.redis), workers.cpu_seconds(),
                 servers.cpu_seconds(), _idle())
        end = start[0] + window
        while time.perf_counter() < end and common.counter_value(bench.redis) < backlog - 1_000:
            time.sleep(0.01)
        now, count = time.perf_counter(), common.counter_value(bench.redis)
        cpu, server, idle = workers.cpu_seconds(), servers.cpu_seconds(), _idle()
    finally:
        workers.stop()
        bench.reset()
    done = max(1, count - start[1])
    jiffies = max(1, idle[1] - start[4][1])
    return Window(rate=done / (now - start[0]), worker_us=(cpu - start[2]) * 1e6 / done,
                  server_us=(server - start[3]) * 1e6 / done,
                  busy=1 - (idle[0] - start[4][0]) / jiffies)


def median(windows: list[Window]) -> Window:
    return Window(*(statistics.median(getattr(w, f.name) for w in windows)
                    for f in fields(Window)))


def report(found: dict[str, Window], rounds: int, window: float) -> str:
    celery, conveyor = found["Celery"], found["Conveyor (classic queues)"]
    cores = os.cpu_count() or 1
    target = 3 * celery.rate
    allowed = cores * conveyor.busy / target * 1e6
    lines = [
        "# RabbitMQ: where a task's CPU goes",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python -m "
        f"benchmarks.rabbitmq_budget`: {rounds} interleaved rounds, a {window:g} s window "
        f"after the first {SKIP:,} tasks, 2 worker processes, {cores} CPUs; medians.",
        "",
        "| Variant | tasks/s | worker CPU per task (µs) | RabbitMQ + Redis CPU per task (µs) "
        "| total (µs) | machine busy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, w in found.items():
        lines.append(f"| {label} | {w.rate:,.0f} | {w.worker_us:.0f} | {w.server_us:.0f} | "
                     f"{w.worker_us + w.server_us:.0f} | {100 * w.busy:.0f} % |")
    lines += [
        "",
        f"3x Celery's rate is {target:,.0f} tasks/s.  At the busy share Conveyor reaches "
        f"({100 * conveyor.busy:.0f} %), {cores} CPUs give that rate {allowed:.0f} µs of "
        "CPU per task, worker and servers together; each variant's total is above.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rabbitmq_budget",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=6.0, help="seconds measured per run")
    args = parser.parse_args(argv)
    benches: dict[str, Bench] = {}
    runs: dict[str, list[Window]] = {v.label: [] for v in VARIANTS}
    for round_ in range(args.rounds):
        for variant in VARIANTS if round_ % 2 == 0 else reversed(VARIANTS):
            bench = benches.get(variant.system)
            if bench is None:
                bench = benches[variant.system] = Bench(systems.get(variant.system)(), Plan())
            base = {k: v for k, v in bench.env.items() if k not in _SWITCHES}
            bench.env = {**base, **dict(variant.env)}
            got = measure(bench, variant.backlog, args.window)
            runs[variant.label].append(got)
            print(f"  {variant.label}: {got.rate:,.0f}/s, worker {got.worker_us:.0f} µs, "
                  f"servers {got.server_us:.0f} µs, busy {100 * got.busy:.0f} %", flush=True)
    found = {label: median(windows) for label, windows in runs.items()}
    text = report(found, args.rounds, args.window)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rabbitmq-budget.md").write_text(text)
    (RESULTS / "rabbitmq-budget.json").write_text(json.dumps(
        {label: [asdict(w) for w in windows] for label, windows in runs.items()}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
