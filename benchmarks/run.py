"""Run the side-by-side benchmark and write the report.

    python -m benchmarks.run [--quick] [--systems conveyor-redis,celery,...] [--repeat N]
    python -m benchmarks.run --rabbitmq [--quick] [--repeat N]

``--rabbitmq`` runs the RabbitMQ section instead: Conveyor, Celery and Dramatiq
on one RabbitMQ vhost (``benchmarks/systems/rabbitmq.py``), every enqueue
confirmed, reported to ``benchmarks/results/rabbitmq.md`` against Celery on
RabbitMQ.

For each system: build its venv (first time only), then per repeat

1. enqueue N no-op tasks one call at a time, then through its bulk path,
   then as one ``group`` and through ``chunks`` where the system has them
   (no workers running; the database is flushed after each);
2. queue N INCR tasks, start the workers and time from the start of the
   worker processes until the shared counter reaches N (RSS sampled meanwhile);
3. with those workers now warm: round trips of one task, enqueue to result;
4. a chord of 1,000 (header tasks plus a callback that runs after all).

The results-off variants (``conveyor-redis-noresult``, ``huey-noresult``)
run steps 2 and 3 only, with no task storing its result; their round trip
ends when the task's signal is popped from a Redis list.

Results go to ``benchmarks/results/latest.md`` and ``latest.json``; worker
logs and client output to ``benchmarks/results/raw/`` (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import common, envs, report, systems
from benchmarks.systems.base import ROOT, System

RESULTS = ROOT / "benchmarks" / "results"
RAW = RESULTS / "raw"


@dataclass(frozen=True)
class Plan:
    enqueue_n: int = 20_000
    process_n: int = 20_000
    samples: int = 500
    warmup: int = 50
    chord_n: int = 1_000
    repeat: int = 3
    procs: int = 2
    drain_timeout: float = 300.0

    @classmethod
    def quick(cls, repeat: int | None = None) -> Plan:
        return cls(enqueue_n=2_000, process_n=2_000, samples=100, warmup=10, chord_n=1_000,
                   repeat=repeat or 1)


class Bench:
    """One system's runs: its venv, its environment, its workers."""

    def __init__(self, system: System, plan: Plan) -> None:
        self.system = system
        self.plan = plan
        self.python = envs.ensure_venv(system.env, system.requirements)
        envs.compile_sources(self.python)
        self.env = {**os.environ, **system.environment(), "PYTHONPATH": str(ROOT),
                    "PYTHONUNBUFFERED": "1"}
        self.redis = common.redis_client(system.database)
        self.log = RAW / f"{system.name}.log"

    # -- plumbing ------------------------------------------------------------
    def reset(self) -> None:
        self.redis.flushdb()
        self.system.reset()

    def client(self, op: str, n: int = 0, samples: int = 0, warmup: int = 0,
               timeout: float = 900.0) -> dict[str, Any]:
        cmd = [str(self.python), "-m", "benchmarks.client", self.system.name, op,
               "--n", str(n), "--samples", str(samples), "--warmup", str(warmup)]
        done = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        with open(self.log, "a") as log:
            log.write(f"\n== client {op} n={n} rc={done.returncode}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"client {op} failed: {tail[0]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    # -- one repeat ----------------------------------------------------------
    def repeat(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {"errors": {}}
        n = self.plan.enqueue_n
        steps = self.system.steps
        for op in ("enqueue_one", "enqueue_bulk", "enqueue_group", "enqueue_chunks"):
            if op in steps:
                self.reset()
                self._step(out, op, lambda op=op: self._rate(op, n))
        self.reset()
        workers = None
        try:
            try:
                workers = self._processing(out)
            except RuntimeError as exc:  # workers died: the report says so, the run goes on
                out["errors"]["processing"] = str(exc)
            if workers is not None and "latency" in steps:
                self._step(out, "latency", lambda: self._latency(workers))
            if workers is not None and "chord" in steps:
                self._step(out, "chord", lambda: self._chord())
        finally:
            if workers is not None:
                workers.stop()
            self.reset()
        return out

    def _step(self, out: dict[str, Any], key: str, fn: Any) -> None:
        try:
            value = fn()
        except Exception as exc:  # one failing step must not lose the others
            out["errors"][key] = f"{type(exc).__name__}: {exc}"
            print(f"    {key}: ERROR {exc}", flush=True)
            return
        if value is not None:
            out[key] = value

    def _rate(self, op: str, n: int) -> float | None:
        got = self.client(op, n=n)
        if got.get("unsupported"):
            return None
        rate = n / got["seconds"]
        print(f"    {op}: {rate:,.0f} tasks/s", flush=True)
        return rate

    def _processing(self, out: dict[str, Any]) -> common.Workers | None:
        n = min(self.plan.process_n, self.system.processing_cap or self.plan.process_n)
        try:
            self.client("preload", n=n)
            self.system.preloaded()
        except Exception as exc:
            out["errors"]["processing"] = f"preload: {exc}"
            return None
        workers, metrics = self.drain(n, self.plan.procs)
        if metrics is None:
            out["errors"]["processing"] = f"not drained within {self.plan.drain_timeout:.0f}s"
            workers.stop()
            return None
        out.update(metrics)
        print(f"    processing: {metrics['processing']:,.0f} tasks/s ({n} tasks, first at "
              f"{metrics['startup']:.2f}s, {metrics['cpu_per_task']:,.0f} us CPU each); peak "
              f"RSS {metrics['rss_total'] / 2**20:.0f} MiB in {metrics['rss_processes']} "
              "processes", flush=True)
        return workers

    def drain(self, n: int, procs: int,
              until: int | None = None) -> tuple[common.Workers, dict[str, Any] | None]:
        """Start ``procs`` workers on a queue of INCR tasks; time until the
        counter reaches ``until`` (default ``n``).  The workers are left running."""
        target = until or n
        commands = self.system.worker_commands(self.python, procs)
        workers = common.start_workers(commands, self.env, ROOT, self.log)
        try:
            with common.RssSampler(workers) as sampler:
                drained = self._wait_drained(workers, target)
        except BaseException:  # interrupted or failed: leave no workers behind
            workers.stop()
            raise
        if drained is None:
            return workers, None
        peak = sampler.peak
        total, first, seen_at_first, cpu, server_cpu = drained
        done = max(1, target - seen_at_first)
        return workers, {
            "processing": target / total,
            "processing_steady": (target - seen_at_first) / max(1e-9, total - first),
            "processing_n": target,
            "startup": first,
            "cpu_per_task": cpu * 1e6 / done,
            "server_cpu_per_task": server_cpu * 1e6 / done,
            # The rate if worker and servers had every core to themselves and
            # nothing else waited: what the CPU per task allows on this machine.
            "cpu_bound": (os.cpu_count() or 1) * done / max(1e-9, cpu + server_cpu),
            "rss_total": peak.total,
            "rss_processes": peak.processes,
            "rss_per_process": peak.total / max(1, peak.processes),
            "rss_largest": peak.largest,
        }

    def _wait_drained(self, workers: common.Workers,
                      n: int) -> tuple[float, float, int, float, float] | None:
        """(seconds to drained, seconds to the first INCR, count seen then,
        worker and server CPU seconds used from then to drained)."""
        first: tuple[float, int, float, float] | None = None
        servers = common.Servers(self.system.server_ports())
        deadline = workers.started + self.plan.drain_timeout
        while time.perf_counter() < deadline:
            count = common.counter_value(self.redis)
            now = time.perf_counter()
            if count and first is None:
                first = (now - workers.started, count, workers.cpu_seconds(),
                         servers.cpu_seconds())
            if count >= n:
                assert first is not None
                cpu = workers.cpu_seconds() - first[2]
                return (now - workers.started, first[0], first[1], cpu,
                        servers.cpu_seconds() - first[3])
            if not workers.alive():
                raise RuntimeError(f"workers exited early; see {self.log}")
            time.sleep(0.005)
        return None

    def _latency(self, workers: common.Workers) -> dict[str, float]:
        count = min(self.plan.samples, self.system.samples_cap or self.plan.samples)
        warmup = min(self.plan.warmup, count // 5 or 1)
        got = self.client("latency", samples=count, warmup=warmup)
        samples = [s * 1000 for s in got["samples"]]
        result: dict[str, float] = {
            "samples": len(samples),
            "p50": common.percentile(samples, 50),
            "p99": common.percentile(samples, 99),
            "mean": sum(samples) / len(samples),
        }
        print(f"    round trip: p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms",
              flush=True)
        return result

    def _chord(self) -> float | None:
        got = self.client("chord", n=self.plan.chord_n)
        if got.get("unsupported"):
            return None
        print(f"    chord of {self.plan.chord_n:,}: {got['seconds']:.2f} s", flush=True)
        return float(got["seconds"])


def run_all(names: list[str], plan: Plan) -> list[dict[str, Any]]:
    """Round-robin: run 1 of every system, then run 2 of every system, ...

    Interleaving spreads a busy spell of a shared machine over all systems
    instead of loading it onto whichever one ran then.
    """
    benches = []
    for name in names:
        system = systems.get(name)()
        benches.append(Bench(system, plan))  # builds the venv on first use
    records: list[dict[str, Any]] = [{
        "name": b.system.name, "label": b.system.label,
        "versions": envs.installed_versions(b.system.env, b.system.packages),
        "worker": b.system.worker_flags, "bulk_path": b.system.bulk_path,
        "chord_path": b.system.chord_path,
        "group_path": b.system.group_path, "chunks_path": b.system.chunks_path,
        "redis_db": b.system.database, "section": b.system.section,
        "steps": list(b.system.steps), "results_off_of": b.system.results_off_of,
        "runs": [], "load": [],
    } for b in benches]
    for index in range(plan.repeat):
        for bench, record in zip(benches, records, strict=True):
            load = os.getloadavg()[0]
            print(f"== {bench.system.label}: run {index + 1}/{plan.repeat} "
                  f"(load average {load:.1f})", flush=True)
            record["runs"].append(bench.repeat(index))
            record["load"].append(load)
    return records


def machine(with_postgres: bool) -> dict[str, Any]:
    import psutil

    from benchmarks.systems import pg

    info = common.redis_client(0).info("server")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "redis": info.get("redis_version"),
        "postgresql": pg.server_version() if with_postgres else None,
    }


def _postgres_systems(names: list[str], asked: bool) -> list[str]:
    """``names`` less the PostgreSQL section when no server answers and nobody asked for it.

    ``make bench`` runs every section; a machine without PostgreSQL still gets
    the Redis report, told why the other section is missing.  Naming a
    PostgreSQL system with ``--systems`` makes a missing server an error.
    """
    from benchmarks.systems import pg

    wanted = [n for n in names if systems.get(n).section == "postgresql"]
    if not wanted:
        return names
    why = pg.reachable()
    if why is None:
        return names
    if asked:
        raise SystemExit(f"PostgreSQL is not reachable at BENCH_PG_URL ({why}); start one "
                         "or leave out " + ", ".join(wanted))
    print(f"PostgreSQL is not reachable ({why}): skipping the PostgreSQL section "
          f"({', '.join(wanted)})", file=sys.stderr, flush=True)
    return [n for n in names if n not in wanted]


def _require_redis() -> None:
    try:
        common.redis_client(0).ping()
    except Exception as exc:
        raise SystemExit(
            f"Redis is not reachable at {common.REDIS_HOST}:{common.REDIS_PORT} ({exc}); start "
            "one (e.g. apt-get install redis-server) or set BENCH_REDIS_HOST / BENCH_REDIS_PORT"
        ) from None


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="2,000 tasks, 100 latency samples, one run: for iterating")
    parser.add_argument("--systems", default=",".join(systems.ALL),
                        help=f"comma-separated, from: {','.join(systems.ALL)}")
    parser.add_argument("--rabbitmq", action="store_true",
                        help=f"the RabbitMQ section: {','.join(systems.RABBITMQ)}")
    parser.add_argument("--repeat", type=int, default=None, help="runs per system (default 3)")
    parser.add_argument("--output", default=None,
                        help="report path without extension (default benchmarks/results/latest; "
                        "benchmarks/results/raw/quick with --quick, so a quick run never "
                        "replaces the committed report)")
    args = parser.parse_args(argv)
    # Stopped from outside (SIGTERM, or SIGINT even when started in the
    # background): unwind, so the finally blocks stop the worker processes.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    plan = Plan.quick(args.repeat) if args.quick else Plan(repeat=args.repeat or 3)
    chosen = ",".join(systems.RABBITMQ) if args.rabbitmq else args.systems
    names = [s.strip() for s in chosen.split(",") if s.strip()]
    for name in names:
        systems.get(name)  # fail fast on a typo
    _require_redis()
    names = _postgres_systems(names, asked=args.systems != parser.get_default("systems"))
    RAW.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = run_all(names, plan)
    data = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": round(time.time() - started),
        "quick": args.quick,
        "plan": plan.__dict__,
        "machine": machine(any(systems.get(n).section == "postgresql" for n in names)),
        "systems": results,
        **(report.RABBITMQ_SECTION if args.rabbitmq else {}),
    }
    name = "rabbitmq" if args.rabbitmq else "latest"
    out = Path(args.output or (RAW / f"quick-{name}" if args.quick else RESULTS / name))
    out.parent.mkdir(parents=True, exist_ok=True)
    data = report.summarize_all(data)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.with_suffix(".md").write_text(report.markdown(data))
    print(report.markdown(data))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')} "
          f"in {data['duration_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
