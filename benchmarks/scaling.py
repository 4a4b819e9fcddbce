"""The scaling study: throughput against worker processes and against backlog.

    python -m benchmarks.scaling [--quick] [--systems conveyor-redis,celery,huey]
                                 [--procs 1,2,4,8] [--backlogs 1000,10000,100000,1000000]
                                 [--backlog-systems conveyor-redis] [--repeat N]

* Workers: N INCR tasks drained by 1, 2, 4 and 8 worker processes (the
  machine has 2 cores, so above 2 this measures contention, not more CPU).
* Backlog: with 1,000 … 1,000,000 INCR tasks queued, the rate at which 2
  worker processes take the first ``window`` of them (20,000), plus the
  bulk enqueue rate at that size and Redis memory per queued message.

Writes ``benchmarks/results/scaling.md`` / ``.json`` and the chart
``docs/images/scaling.svg`` (drawn by :mod:`benchmarks.svg`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import svg, systems
from benchmarks.run import RAW, RESULTS, Bench, Plan, _exit_on_signal, _require_redis, machine
from benchmarks.systems.base import ROOT

CHART = ROOT / "docs" / "images" / "scaling.svg"


def _median(values: list[float]) -> float:
    return statistics.median(values)


def worker_scaling(bench: Bench, procs: list[int], n: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for p in procs:
        rates, steady, cpu = [], [], []
        for _ in range(repeat):
            bench.reset()
            bench.client("preload", n=n)
            workers, metrics = bench.drain(n, p)
            workers.stop()
            bench.reset()
            if metrics is None:
                continue
            rates.append(metrics["processing"])
            steady.append(metrics["processing_steady"])
            cpu.append(metrics["cpu_per_task"])
        if not rates:
            print(f"  {p} processes: not drained", flush=True)
            continue
        row = {"procs": p, "n": n, "rate": _median(rates), "steady": _median(steady),
               "cpu_per_task": _median(cpu), "runs": rates, "load": os.getloadavg()[0]}
        print(f"  {p} processes: {row['rate']:,.0f} tasks/s (steady {row['steady']:,.0f}, "
              f"{row['cpu_per_task']:,.0f} us CPU/task)", flush=True)
        rows.append(row)
    return rows


def backlog_scaling(bench: Bench, backlogs: list[int], window: int,
                    procs: int) -> list[dict[str, Any]]:
    rows = []
    for size in backlogs:
        bench.reset()
        used_before = int(bench.redis.info("memory")["used_memory"])
        started = time.perf_counter()
        got = bench.client("preload", n=size, timeout=3600)
        enqueue_rate = size / got["seconds"]
        used_after = int(bench.redis.info("memory")["used_memory"])
        take = min(size, window)
        workers, metrics = bench.drain(size, procs, until=take)
        workers.stop()
        bench.reset()
        if metrics is None:
            print(f"  backlog {size:,}: not drained", flush=True)
            continue
        row = {"backlog": size, "window": take, "rate": metrics["processing"],
               "steady": metrics["processing_steady"], "cpu_per_task": metrics["cpu_per_task"],
               "enqueue_rate": enqueue_rate,
               "bytes_per_message": (used_after - used_before) / size,
               "seconds": time.perf_counter() - started, "load": os.getloadavg()[0]}
        print(f"  backlog {size:,}: {row['steady']:,.0f} tasks/s over the first {take:,} "
              f"(bulk enqueue {enqueue_rate:,.0f}/s, {row['bytes_per_message']:,.0f} B of "
              "Redis per message)", flush=True)
        rows.append(row)
    return rows


def chart(data: dict[str, Any], path: Path) -> None:
    workers = svg.Panel(
        "Throughput by worker processes", "worker processes (2 cores; log scale)",
        "tasks/s, start to drained",
        [svg.Series(s["label"], [(r["procs"], r["rate"]) for r in s["workers"]])
         for s in data["systems"] if s["workers"]],
        log_x=True, x_ticks=data["procs"])
    backlog_series = [
        svg.Series(f"{s['label']}: processing", [(r["backlog"], r["steady"]) for r in s["backlog"]])
        for s in data["systems"] if s.get("backlog")]
    panels = [workers]
    if backlog_series:
        panels.append(svg.Panel("Throughput by queue backlog (2 processes)",
                                "messages queued (log scale)", "tasks/s, steady",
                                backlog_series, log_x=True, x_ticks=data["backlogs"]))
    caption = (f"{data['when']}; {data['machine']['cpus']} CPUs, Redis "
               f"{data['machine']['redis']}; each task one Redis INCR. benchmarks/scaling.py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg.figure(panels, caption))


def markdown(data: dict[str, Any]) -> str:
    lines = ["# Scaling study", "", f"{data['when']}, {data['duration_s']} s. Tasks do one "
             f"Redis INCR each. Chart: docs/images/scaling.svg.", "",
             "## Throughput by worker processes", "",
             "| System | " + " | ".join(f"{p} proc." for p in data["procs"]) + " |",
             "|---" + "|---:" * len(data["procs"]) + "|"]
    for s in data["systems"]:
        by = {r["procs"]: r for r in s["workers"]}
        cells = [f"{by[p]['rate']:,.0f} ({by[p]['cpu_per_task']:,.0f} us CPU)" if p in by
                 else "—" for p in data["procs"]]
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: tasks/s from worker start to drained (median), and worker CPU "
              "per task.", ""]
    backlog = [s for s in data["systems"] if s.get("backlog")]
    if backlog:
        lines += ["## Throughput by queue backlog", "",
                  "| System | Backlog | Processing, steady (tasks/s) | Worker CPU per task (us)"
                  " | Bulk enqueue (tasks/s) | Redis bytes per queued message |",
                  "|---|---:|---:|---:|---:|---:|"]
        for s in backlog:
            for r in s["backlog"]:
                lines.append(f"| {s['label']} | {r['backlog']:,} | {r['steady']:,.0f} | "
                             f"{r['cpu_per_task']:,.0f} | {r['enqueue_rate']:,.0f} | "
                             f"{r['bytes_per_message']:,.0f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--systems", default="conveyor-redis,celery,huey")
    parser.add_argument("--backlog-systems", default="conveyor-redis")
    parser.add_argument("--procs", default="1,2,4,8")
    parser.add_argument("--backlogs", default="1000,10000,100000,1000000")
    parser.add_argument("--n", type=int, default=None, help="tasks per worker-count run")
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--redraw", action="store_true",
                        help="only redraw the chart and table from results/scaling.json")
    args = parser.parse_args(argv)
    if args.redraw:
        data = json.loads((RESULTS / "scaling.json").read_text())
        (RESULTS / "scaling.md").write_text(markdown(data))
        chart(data, CHART)
        return
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    n = args.n or (2_000 if args.quick else 20_000)
    repeat = args.repeat or (1 if args.quick else 2)
    backlogs = _ints(args.backlogs) if not args.quick else [1_000, 10_000]
    procs = _ints(args.procs)
    _require_redis()
    RAW.mkdir(parents=True, exist_ok=True)
    started = time.time()
    out_systems = []
    for name in [s for s in args.systems.split(",") if s]:
        system = systems.get(name)()
        bench = Bench(system, Plan(drain_timeout=900.0))
        print(f"== {system.label}", flush=True)
        cap = system.processing_cap or n
        record: dict[str, Any] = {"name": name, "label": system.label,
                                  "workers": worker_scaling(bench, procs, min(n, cap), repeat)}
        if name in args.backlog_systems.split(","):
            record["backlog"] = backlog_scaling(bench, backlogs, args.window, 2)
        out_systems.append(record)
    data = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "duration_s": round(time.time() - started), "machine": machine(False),
            "procs": procs, "backlogs": backlogs, "systems": out_systems}
    (RESULTS / "scaling.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "scaling.md").write_text(markdown(data))
    chart(data, CHART)
    print(markdown(data))


if __name__ == "__main__":
    main()
