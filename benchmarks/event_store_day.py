"""A simulated day in an event store: storage, write and read costs (numbers, not a test).

    .venv/bin/python benchmarks/event_store_day.py URL [MINUTES] [VACUUM_EVERY]

Writes MINUTES minutes (1440 by default) of 1,000 tasks a minute (10 task
names, 2 queues, one failure in 50) into the event store at URL, one worker
batch per minute, each followed by the once-a-minute prune a worker does;
then times the monitor's reads.  The simulated minutes end now, so the
retention keeps all of them and only the index cap prunes.

On PostgreSQL, VACUUM_EVERY > 0 runs a plain ``VACUUM`` of the event tables
every that many simulated minutes: what autovacuum does at this pace on a
server where it is on (test servers often turn it off).  Sizes: the
``pg_total_relation_size`` of each ``conveyor_events_`` table afterwards.
Use a URL of its own (``?schema=bench_day``); nothing is dropped.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable

from conveyor import states
from conveyor._events import Recorder, TaskQuery, TaskReport, store_from_url
from conveyor.monitor import data
from conveyor.monitor.api import SCAN

TABLES = ("tasks", "timeline", "counts", "counts10")
NAMES = [f"proj.task{i}" for i in range(10)]


def minute_of_tasks(recorder: Recorder, start: float, first: int, rnd: random.Random) -> None:
    for i in range(1000):
        task_id = f"{first + i:08x}-{rnd.getrandbits(64):016x}"
        name, queue = NAMES[i % 10], ("default", "slow")[i % 2]
        at, runtime = start + i * 0.06, rnd.random() * 0.5
        recorder.add(TaskReport(task_id, name, queue, states.STARTED, at, sent_at=at - 0.01,
                                started_at=at, wait=0.01))
        state = states.FAILURE if i % 50 == 0 else states.SUCCESS
        recorder.add(TaskReport(task_id, name, queue, state, at + runtime, sent_at=at - 0.01,
                                started_at=at, runtime=runtime, wait=0.01,
                                info="boom" if state == states.FAILURE else None))


def vacuum(url: str) -> None:
    import psycopg

    from conveyor._postgres import parse_postgres_url

    parsed = parse_postgres_url(url)
    with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f'VACUUM "{parsed.schema}".conveyor_events_{table}')


def sizes(url: str) -> None:
    import psycopg

    from conveyor._postgres import parse_postgres_url

    parsed = parse_postgres_url(url)
    with psycopg.connect(parsed.conninfo) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname LIKE 'conveyor_events%%' "
            "ORDER BY 1", (parsed.schema,)).fetchall()
    for name, size in rows:
        print(f"{name}: {size / 2**20:.1f} MiB")
    print(f"total: {sum(size for _, size in rows) / 2**20:.1f} MiB")


def timed(label: str, action: Callable[[], object], repeat: int = 5) -> None:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        took.append(time.perf_counter() - started)
    print(f"{label}: median {statistics.median(took) * 1000:.1f} ms")


def summary(label: str, values: list[float]) -> str:
    p90 = sorted(values)[int(len(values) * 0.9)]
    return f"{label}: median {statistics.median(values) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms"


def main(url: str, minutes: int, vacuum_every: int) -> None:
    store = store_from_url(url, retention=86400)
    start, rnd = time.time() - minutes * 60, random.Random(1)
    writes, prunes = [], []
    for minute in range(minutes):
        recorder = Recorder()
        minute_of_tasks(recorder, start + minute * 60, minute * 1000, rnd)
        batch = recorder.drain("w1")
        started = time.perf_counter()
        store.write(batch)
        writes.append(time.perf_counter() - started)
        store._pruned_at = 0.0  # type: ignore[attr-defined]  # a minute has passed
        started = time.perf_counter()
        store.prune()
        prunes.append(time.perf_counter() - started)
        if vacuum_every and minute % vacuum_every == 0:
            vacuum(url)
    print(summary("write per 1,000 tasks", writes))
    print(summary("prune", prunes))
    timed("overview, last hour", lambda: data.overview(store, 3600))
    timed("overview, last day", lambda: data.overview(store, 86400))
    timed("search by name and state", lambda: store.search(
        TaskQuery(name="task3", state=states.FAILURE, limit=100, scan=SCAN)))
    timed("newest 100", lambda: store.tasks(TaskQuery(limit=100)))
    newest = store.tasks(TaskQuery(limit=1))[0].task_id
    timed("task by id, its timeline", lambda: (store.task(newest), store.timeline(newest)))
    if url.startswith("postgres"):
        sizes(url)
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1440,
         int(sys.argv[3]) if len(sys.argv) > 3 else 0)
