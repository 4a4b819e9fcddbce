"""Turn raw runs into medians, ratios, target checks and a Markdown report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.common import summarize
from benchmarks.systems.base import STEPS

BASELINE = "celery"
SUBJECT = "conveyor-redis"
# The subject with task_ignore_result=True: issue 22's targets 3 and 4 compare the two.
SUBJECT_NO_RESULT = "conveyor-redis-noresult"
OURS = ("conveyor-redis", "conveyor-redis-noresult", "conveyor-sqlite", "conveyor-amqp",
        "conveyor-amqp-classic", "conveyor-postgres")
# ``run.py --rabbitmq`` stores these in its data: the section's baseline and subject.
# The subject uses classic queues, as the peers do (quorum: its own row).
RABBITMQ_SECTION = {"section": "rabbitmq", "baseline": "celery-amqp",
                    "subject": "conveyor-amqp-classic"}
PG_SUBJECT = "conveyor-postgres"
PG_METRICS = ("enqueue_one", "enqueue_bulk", "processing", "latency_p50", "latency_p99",
              "rss_per_process", "cpu_per_task", "server_cpu_per_task")


def roles(data: dict[str, Any]) -> tuple[str, str]:
    """(baseline, subject) of this report: Celery and Conveyor on the same broker."""
    return data.get("baseline", BASELINE), data.get("subject", SUBJECT)


def label_of(data: dict[str, Any], name: str) -> str:
    return next((s["label"] for s in data["systems"] if s["name"] == name), name)


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    digits: int = 0

    def fmt(self, value: float | None) -> str:
        if value is None:
            return "—"
        if self.unit == "MiB":
            value = value / 2**20
        return f"{value:,.{self.digits}f}"


METRICS = [
    Metric("enqueue_one", "Enqueue, one by one", "tasks/s", True),
    Metric("enqueue_bulk", "Enqueue, bulk path", "tasks/s", True),
    Metric("enqueue_group", "Enqueue, one group", "tasks/s", True),
    Metric("enqueue_chunks", "Enqueue, chunks", "tasks/s", True),
    Metric("processing", "Processing (start to drained)", "tasks/s", True),
    Metric("latency_p50", "Round trip p50", "ms", False, 2),
    Metric("latency_p99", "Round trip p99", "ms", False, 2),
    Metric("chord", "Chord of 1,000", "s", False, 2),
    Metric("rss_per_process", "Worker RSS per process", "MiB", False, 1),
    Metric("rss_total", "Worker RSS, all processes", "MiB", False, 1),
]
EXTRA = [
    Metric("processing_steady", "Processing, first to last task", "tasks/s", True),
    Metric("startup", "Worker start to first task", "s", False, 2),
    Metric("cpu_per_task", "Worker CPU per task", "µs", False),
    Metric("server_cpu_per_task", "Server CPU per task", "µs", False),
    Metric("cpu_bound", "CPU-bound rate", "tasks/s", True),
]
BY_KEY = {m.key: m for m in METRICS + EXTRA}


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    if key.startswith("latency_"):
        part = key.split("_", 1)[1]
        return [r["latency"][part] for r in runs if "latency" in r]
    return [r[key] for r in runs if r.get(key) is not None]


def summarize_all(data: dict[str, Any]) -> dict[str, Any]:
    for system in data["systems"]:
        summary = {}
        for metric in METRICS + EXTRA:
            found = summarize(_values(system["runs"], metric.key))
            if found is not None:
                summary[metric.key] = found.as_dict()
        system["summary"] = summary
        system["processing_n"] = max((r.get("processing_n", 0) for r in system["runs"]),
                                     default=0)
        system["errors"] = sorted({f"{k}: {v}" for r in system["runs"]
                                   for k, v in r["errors"].items()})
    data["targets"] = targets(data)
    return data


def median(data: dict[str, Any], name: str, key: str) -> float | None:
    for system in data["systems"]:
        if system["name"] == name and key in system["summary"]:
            return float(system["summary"][key]["median"])
    return None


def speedup(metric: Metric, value: float | None, base: float | None) -> float | None:
    """How many times better than ``base`` (>1 is better, whatever the direction)."""
    if value is None or base is None or value == 0 or base == 0:
        return None
    return value / base if metric.higher_is_better else base / value


def fastest_peer(data: dict[str, Any], metric: Metric) -> tuple[str, float] | None:
    """The best peer on Redis among those that store results (as the subject does)."""
    best: tuple[str, float] | None = None
    for system in data["systems"]:
        if system["name"] in OURS or metric.key not in system["summary"] or \
                _section(system) != "redis" or system.get("results_off_of"):
            continue
        value = float(system["summary"][metric.key]["median"])
        better = best is None or (value > best[1] if metric.higher_is_better
                                  else value < best[1])
        if better:
            best = (system["label"], value)
    return best


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for Conveyor on Redis (or RabbitMQ), each judged in this run."""
    rows = rabbitmq_targets(data) if data.get("section") == "rabbitmq" else redis_targets(data)
    return [_judged(*row) for row in rows]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _percent(a: float | None, b: float | None) -> float | None:
    found = _ratio(a, b)
    return None if found is None else 100 * found


def rabbitmq_targets(data: dict[str, Any]) -> list[tuple[str, float | None, float, str]]:
    """Issue 20's: against Celery and Dramatiq, each on the same RabbitMQ."""
    baseline, subject = roles(data)

    def m(name: str, key: str) -> float | None:
        return median(data, name, key)

    proc = m(subject, "processing")
    return [
        ("Processing ≥ 3x Celery", _ratio(proc, m(baseline, "processing")), 3.0, "x"),
        ("Processing ahead of Dramatiq", _ratio(proc, m("dramatiq-amqp", "processing")),
         1.0, "x"),
        ("Round trip p50 < 2 ms", m(subject, "latency_p50"), 2.0, "ms"),
        ("Enqueue with confirms ≥ 2x Celery",
         _ratio(m(subject, "enqueue_one"), m(baseline, "enqueue_one")), 2.0, "x"),
    ]


def redis_targets(data: dict[str, Any]) -> list[tuple[str, float | None, float, str]]:
    def m(name: str, key: str) -> float | None:
        return median(data, name, key)

    proc, proc_celery = m(SUBJECT, "processing"), m(BASELINE, "processing")
    peer = fastest_peer(data, BY_KEY["processing"])
    one, one_celery = m(SUBJECT, "enqueue_one"), m(BASELINE, "enqueue_one")
    bulk, p50 = m(SUBJECT, "enqueue_bulk"), m(SUBJECT, "latency_p50")
    rss, rss_celery = m(SUBJECT, "rss_per_process"), m(BASELINE, "rss_per_process")
    one_huey, chord, chord_celery = m("huey", "enqueue_one"), m(SUBJECT, "chord"), m(BASELINE,
                                                                                       "chord")

    ratio = _ratio
    return [
        ("Processing ≥ 3x Celery", ratio(proc, proc_celery), 3.0, "x"),
        ("Processing ahead of every peer", ratio(proc, peer[1] if peer else None), 1.0, "x"),
        ("Single enqueue ≥ 2x Celery", ratio(one, one_celery), 2.0, "x"),
        ("Bulk enqueue ≥ 50,000 tasks/s", bulk, 50_000.0, "tasks/s"),
        ("Round trip p50 < 2 ms", p50, 2.0, "ms"),
        ("Worker RSS per process ≤ Celery's", ratio(rss, rss_celery), 1.0, "x Celery"),
        # Round two (issue 22), the sending side.
        ("One group of N ≥ 50,000 tasks/s", m(SUBJECT, "enqueue_group"), 50_000.0, "tasks/s"),
        ("Chunks of N calls ≥ 50,000 tasks/s", m(SUBJECT, "enqueue_chunks"), 50_000.0,
         "tasks/s"),
        ("One group of N on SQLite ≥ 30,000 tasks/s", m("conveyor-sqlite", "enqueue_group"),
         30_000.0, "tasks/s"),
        ("Single enqueue ≥ 1.3x Huey", ratio(one, one_huey), 1.3, "x"),
        ("Chord of 1,000 ≥ 10x Celery", ratio(chord_celery, chord), 10.0, "x"),
        # Round two, running tasks: against the results-off variant of the same run.
        ("Round trip p50 without a stored result ≤ 0.5 ms",
         m(SUBJECT_NO_RESULT, "latency_p50"), 0.5, "ms"),
        ("Round trip p50 with a stored result ≤ 0.6 ms", p50, 0.6, "ms"),
        ("Processing with results ≥ 70 % of without",
         _percent(proc, m(SUBJECT_NO_RESULT, "processing")), 70.0, "%"),
        ("Processing with results ≥ 2x the fastest peer with results",
         ratio(proc, peer[1] if peer else None), 2.0, "x"),
    ]


def _judged(title: str, value: float | None, bound: float, unit: str) -> dict[str, Any]:
    """Met as the title says: "≥", "≤", "<", or "ahead of" (strictly above)."""
    if value is None:
        met = None
    elif "≥" in title:
        met = value >= bound
    elif "≤" in title:
        met = value <= bound
    elif "<" in title:
        met = value < bound
    elif " ahead " in f" {title} ":
        met = value > bound
    else:
        raise ValueError(f"target {title!r} says no comparison")
    return {"target": title, "value": value, "bound": bound, "unit": unit, "met": met}


# -- Markdown ----------------------------------------------------------------
def _cell(system: dict[str, Any], metric: Metric, spread: bool) -> str:
    found = system["summary"].get(metric.key)
    if found is None:
        return "n/a" if _unsupported(system, metric) else "error"
    text = metric.fmt(found["median"])
    if spread and len(found["runs"]) > 1:
        text += f" ({metric.fmt(found['min'])}-{metric.fmt(found['max'])})"
    return text


def _step_of(key: str) -> str:
    """The run step (``systems.base.STEPS``) that measures the metric ``key``."""
    if key.startswith("latency_"):
        return "latency"
    return key if key in STEPS else "processing"  # rates, RSS, CPU: the drain


def _unsupported(system: dict[str, Any], metric: Metric) -> bool:
    if _step_of(metric.key) not in system.get("steps", STEPS):
        return True
    if metric.key == "enqueue_bulk":
        return system["bulk_path"] is None
    if metric.key == "chord":
        return system["chord_path"] is None
    if metric.key in ("enqueue_group", "enqueue_chunks"):
        path = "group_path" if metric.key == "enqueue_group" else "chunks_path"
        return system.get(path) is None
    return False


def _ratio_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _section(system: dict[str, Any]) -> str:
    return str(system.get("section") or "redis")


def markdown(data: dict[str, Any]) -> str:
    redis = {**data, "systems": [s for s in data["systems"] if _section(s) == "redis"]}
    lines = _header(data)
    if redis["systems"]:
        lines += _results_table(redis)
        lines += _ratio_table(redis)
        lines += _subject_table(redis)
        lines += _results_off_table(redis)
        lines += _targets_table(redis)
    lines += _floor_section(data)
    lines += _postgres_section(data)
    lines += _notes(data)
    return "\n".join(lines) + "\n"


FLOOR_METRICS = ("enqueue_one", "processing", "latency_p50", "cpu_per_task",
                 "server_cpu_per_task")
# Each section's floor and the systems set beside it.
FLOORS = {
    "redis": ("floor", (SUBJECT, SUBJECT_NO_RESULT, "huey", "huey-noresult"),
              "Bare redis-py on the same Redis (`benchmarks/apps/floor.py`): a JSON list "
              "pushed with `RPUSH`, popped with `BLPOP` by one plain process per worker, "
              "the echo's value pushed back to a list the caller pops. No envelope, lease, "
              "ack, result record or event."),
    "rabbitmq": ("floor-amqp", ("conveyor-amqp-classic", "conveyor-amqp", "celery-amqp",
                                "dramatiq-amqp"),
                 "Bare pika on the same RabbitMQ (`benchmarks/apps/floor_amqp.py`): a durable "
                 "classic queue, persistent messages, a publisher confirm per send, one ack "
                 "per task after it ran (prefetch 100), one plain process per worker, the "
                 "echo's value back through a Redis list. No envelope, lease, side store, "
                 "result record or event."),
}


def _floor_section(data: dict[str, Any]) -> list[str]:
    """The section's floor beside the queues: how far each is from it."""
    floor, against, what = FLOORS[data.get("section", "redis")]
    if not any(s["name"] == floor for s in data["systems"]):
        return []
    metrics = [BY_KEY[k] for k in FLOOR_METRICS]
    rows = ["| System | " + " | ".join(f"{m.title} ({m.unit})" for m in metrics) + " |",
            "|---" + "|---:" * len(metrics) + "|"]
    for name in (floor, *against):
        if not any(s["name"] == name for s in data["systems"]):
            continue
        cells = []
        for m in metrics:
            value, least = median(data, name, m.key), median(data, floor, m.key)
            cell = m.fmt(value)
            if name != floor and value and least and m.key in FLOOR_METRICS[:3]:
                cell += f" ({_ratio_text(speedup(m, value, least))})"
            cells.append(cell)
        rows.append(f"| {label_of(data, name)} | " + " | ".join(cells) + " |")
    return ["## The floor", "", f"{what} In brackets, each system's speed as a fraction "
            "of the floor's (1x: as fast as the floor).", "", *rows, ""]


def _postgres_section(data: dict[str, Any]) -> list[str]:
    """Conveyor's PostgreSQL broker against the PostgreSQL-only peers, in one table each."""
    found = [s for s in data["systems"] if _section(s) == "postgresql"]
    if not found:
        return []
    metrics = [BY_KEY[k] for k in PG_METRICS]
    head = "| System | " + " | ".join(f"{m.title} ({m.unit})" for m in metrics) + " |"
    rows = [head, "|---" + "|---:" * len(metrics) + "|"]
    for system in found:
        rows.append(f"| {system['label']} | "
                    + " | ".join(_cell(system, m, spread=True) for m in metrics) + " |")
    peers = [s for s in found if s["name"] != PG_SUBJECT]
    ratios = ["| Metric | Conveyor (PostgreSQL) | "
              + " | ".join(f"{p['label']} | vs {p['label']}" for p in peers) + " |",
              "|---|---:" + "|---:|---:" * len(peers) + "|"]
    for m in metrics:
        ours = median(data, PG_SUBJECT, m.key)
        cells = [m.fmt(ours)]
        for peer in peers:
            theirs = median(data, peer["name"], m.key)
            ratio = (ours / theirs if ours and theirs else None) if m.unit == "MiB" \
                else speedup(m, ours, theirs)
            cells += [m.fmt(theirs), _ratio_text(ratio)]
        ratios.append(f"| {m.title} ({m.unit}) | " + " | ".join(cells) + " |")
    version = data["machine"].get("postgresql") or "?"
    return ["## PostgreSQL section", "",
            f"Conveyor's PostgreSQL broker (results in the same schema) against "
            f"Procrastinate and PgQueuer on one PostgreSQL {version} server, a schema each "
            "in a database of the benchmark's own; same tasks, 2 worker processes each, "
            "the INCR counter in Redis as above. Neither peer keeps return values: their "
            "round trip ends when the job's finished status can be read.", "",
            *rows, "", "Conveyor (PostgreSQL) against each peer: speed-ups (above 1x is "
            "better), memory as a plain ratio (below 1x is smaller).", "", *ratios, ""]


def _header(data: dict[str, Any]) -> list[str]:
    mach, plan = data["machine"], data["plan"]
    kind = "quick run" if data["quick"] else "full run"
    return [
        "# Benchmark results",
        "",
        f"{data['when']} — {kind}, {plan['repeat']} run(s) per system, "
        f"{data['duration_s']} s in all. Machine: {mach['cpus']} CPUs, "
        f"{mach['memory_gib']} GiB, Python {mach['python']}, Redis {mach['redis']}, "
        + (f"PostgreSQL {mach['postgresql']}, " if mach.get("postgresql") else "") +
        f"{mach['platform']}.",
        "",
        f"Workloads: enqueue {plan['enqueue_n']:,} no-op tasks; process {plan['process_n']:,} "
        f"queued tasks that each do one Redis INCR with {plan['procs']} worker processes; "
        f"{plan['samples']} round trips after {plan['warmup']} warm-up ones; a chord of "
        f"{plan['chord_n']:,}. Cells: median (min-max) over the runs. Regenerate with "
        "`make bench`; method and flags in docs/performance.md.",
        "",
    ]


def _results_table(data: dict[str, Any]) -> list[str]:
    head = "| System | " + " | ".join(f"{m.title} ({m.unit})" for m in METRICS) + " |"
    rows = [head, "|---" + "|---:" * len(METRICS) + "|"]
    for system in data["systems"]:
        cells = [_cell(system, m, spread=True) for m in METRICS]
        rows.append(f"| {system['label']} | " + " | ".join(cells) + " |")
    return ["## Results", "", *rows, ""]


def _ratio_table(data: dict[str, Any]) -> list[str]:
    base = {m.key: median(data, roles(data)[0], m.key) for m in METRICS}
    head = "| System | " + " | ".join(m.title for m in METRICS) + " |"
    rows = [head, "|---" + "|---:" * len(METRICS) + "|"]
    for system in data["systems"]:
        cells = []
        for m in METRICS:
            value, celery = median(data, system["name"], m.key), base[m.key]
            if m.unit == "MiB":  # memory: plain ratio, lower is better
                cells.append(_ratio_text(value / celery if value and celery else None))
            else:
                cells.append(_ratio_text(speedup(m, value, celery)))
        rows.append(f"| {system['label']} | " + " | ".join(cells) + " |")
    return [
        f"## Ratio to {label_of(data, roles(data)[0])}",
        "",
        "Speed-up over Celery (above 1x is better, for rates and times alike); for memory, "
        "the plain ratio (below 1x is smaller).",
        "",
        *rows,
        "",
    ]


def _subject_table(data: dict[str, Any]) -> list[str]:
    baseline, subject = roles(data)
    if not any(s["name"] == subject for s in data["systems"]):
        return []
    ours_label = label_of(data, subject)
    rows = [f"| Metric | {ours_label} | {label_of(data, baseline)} | vs Celery | Fastest peer "
            "| vs fastest peer |", "|---|---:|---:|---:|---|---:|"]
    for m in METRICS:
        ours = median(data, subject, m.key)
        celery = median(data, baseline, m.key)
        peer = fastest_peer(data, m)
        if m.unit == "MiB":
            vs_celery = ours / celery if ours and celery else None
            vs_peer = ours / peer[1] if ours and peer else None
        else:
            vs_celery = speedup(m, ours, celery)
            vs_peer = speedup(m, ours, peer[1] if peer else None)
        peer_text = f"{peer[0]}: {m.fmt(peer[1])}" if peer else "—"
        rows.append(f"| {m.title} ({m.unit}) | {m.fmt(ours)} | {m.fmt(celery)} | "
                    f"{_ratio_text(vs_celery)} | {peer_text} | {_ratio_text(vs_peer)} |")
    return [f"## {ours_label} against Celery and the fastest peer", "",
            "\"Peer\" is any system other than Conveyor; memory ratios are plain "
            "(below 1x is smaller), the others are speed-ups.", "", *rows, ""]


def _results_off_table(data: dict[str, Any]) -> list[str]:
    """Each results-off variant beside the system it varies: what storing results costs."""
    pairs = [(s["results_off_of"], s["name"]) for s in data["systems"]
             if s.get("results_off_of")]
    if not pairs:
        return []
    rate, p50 = BY_KEY["processing"], BY_KEY["latency_p50"]
    rows = ["| System | Processing with results (tasks/s) | without (tasks/s) | with / without "
            "| Round trip p50 with a result (ms) | without, signalled (ms) |",
            "|---|---:|---:|---:|---:|---:|"]
    for stored, off in pairs:
        with_, without = median(data, stored, "processing"), median(data, off, "processing")
        share = _percent(with_, without)
        rows.append(f"| {label_of(data, stored)} | {rate.fmt(with_)} | {rate.fmt(without)} | "
                    f"{'—' if share is None else f'{share:.0f} %'} | "
                    f"{p50.fmt(median(data, stored, 'latency_p50'))} | "
                    f"{p50.fmt(median(data, off, 'latency_p50'))} |")
    return ["## Results stored and not", "",
            "The same system with and without storing return values (Conveyor "
            "`task_ignore_result=True`, Huey `results=False`), interleaved in this run. "
            "Without a result there is nothing to wait on, so that round trip ends when "
            "the client pops the value the task pushed to a Redis list (`BLPOP`), the "
            "same way for both.", "", *rows, ""]


def _targets_table(data: dict[str, Any]) -> list[str]:
    rows = ["| Target | Measured | Met |", "|---|---:|:---:|"]
    for t in data["targets"]:
        if t["value"] is None:
            measured = "not measured"
        elif t["unit"] == "tasks/s":
            measured = f"{t['value']:,.0f} tasks/s"
        elif t["unit"] == "ms":
            measured = f"{t['value']:.2f} ms"
        elif t["unit"] == "%":
            measured = f"{t['value']:.0f} %"
        else:
            measured = f"{t['value']:.2f}{t['unit']}"
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        rows.append(f"| {t['target']} | {measured} | {met} |")
    return [f"## Targets ({label_of(data, roles(data)[1])}, this run)", "", *rows, ""]


def _path_text(system: dict[str, Any], step: str) -> str:
    if step not in system.get("steps", STEPS):
        return "not run"
    key = {"enqueue_bulk": "bulk_path", "enqueue_group": "group_path",
           "enqueue_chunks": "chunks_path", "chord": "chord_path"}[step]
    return str(system.get(key) or "none")


def _notes(data: dict[str, Any]) -> list[str]:
    lines = ["## Systems, versions and flags", "",
             "| System | Versions | Worker command | Bulk path | Group | Chunks | Chord |",
             "|---|---|---|---|---|---|---|"]
    for s in data["systems"]:
        versions = ", ".join(f"{k} {v}" for k, v in s["versions"].items())
        paths = [_path_text(s, step) for step in
                 ("enqueue_bulk", "enqueue_group", "enqueue_chunks", "chord")]
        lines.append(f"| {s['label']} | {versions} | `{s['worker']}` | "
                     + " | ".join(paths) + " |")
    lines.append("")
    extra = ["## Secondary measures", "",
             "| System | Tasks drained | " + " | ".join(f"{m.title} ({m.unit})" for m in EXTRA)
             + " | Load average at each run's start |",
             "|---|---:" + "|---:" * len(EXTRA) + "|---:|"]
    for s in data["systems"]:
        cells = [_cell(s, m, spread=True) for m in EXTRA]
        load = ", ".join(f"{x:.1f}" for x in s.get("load", []))
        extra.append(f"| {s['label']} | {s['processing_n']:,} | " + " | ".join(cells)
                     + f" | {load} |")
    lines += [*extra, "",
              "Worker CPU per task is user + system time of the worker process tree from "
              "the first task to the last, divided by the tasks in between; it moves less "
              "than wall-clock rates when the machine is shared. Server CPU per task is the "
              "same for the servers the tasks go through (the benchmark Redis, which also "
              "holds the counter, and the RabbitMQ or PostgreSQL server of those sections, "
              "with its child processes). The CPU-bound rate is the machine's cores over the "
              "two together: the rate at which worker and servers would keep every core "
              "busy, a ceiling a system can near but not pass. The load average (1 min) "
              "shows how busy the machine was around each system's runs.", ""]
    capped = [s for s in data["systems"] if s["processing_n"] and
              s["processing_n"] < data["plan"]["process_n"]]
    for s in data["systems"]:
        counts = {int(r["latency"]["samples"]) for r in s["runs"]
                  if "samples" in r.get("latency", {})}
        if counts and max(counts) < data["plan"]["samples"]:
            lines.append(f"- {s['label']}: {max(counts)} round trips per run instead of "
                         f"{data['plan']['samples']} (each takes tens of milliseconds or more).")
    for s in capped:
        lines.append(f"- {s['label']} drained {s['processing_n']:,} tasks instead of "
                     f"{data['plan']['process_n']:,} to keep the run within its time budget; "
                     "its rate is tasks over time all the same.")
    errors = [(s["label"], e) for s in data["systems"] for e in s["errors"]]
    for label, error in errors:
        lines.append(f"- {label}: {error}")
    if capped or errors:
        lines.append("")
    return lines
