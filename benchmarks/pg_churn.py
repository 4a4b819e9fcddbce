"""Does the PostgreSQL broker stay the same size under churn?  (Numbers, not a test.)

    .venv/bin/python -m benchmarks.pg_churn [--tasks 1000000] [--every 50000] [DSN]

A queue that moves millions of short tasks a day writes and deletes every
row it ever holds, so what matters is whether vacuum keeps up: the table and
its indexes must stop growing once the first vacuum has run, however many
tasks go through.  This drives the broker's own API the way a prefork worker
does (one producer process sending ``enqueue_many`` batches, one consumer
process reserving a few at a time and acknowledging each batch in one call)
with the backlog held under ``--backlog`` tasks, and every ``--every`` tasks
prints the size of each broker table and index (``pg_relation_size``; the
TOAST table with its heap), the dead tuples and the vacuum runs PostgreSQL
counted, and the rate since the last checkpoint.

Two processes in all, so the machine stays usable.  The schema (``churn`` by
default, in database ``conveyor_bench``, created when missing) is dropped
before the run and, unless ``--keep``, after it.  ``--json PATH`` saves the
checkpoints.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from conveyor._postgres import parse_postgres_url
from conveyor.brokers import broker_from_url
from conveyor.brokers.base import Envelope

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/conveyor_bench"
QUEUE = "churn"
# What a ``.delay(1, 2)`` of a short task encodes to (131 bytes).
BODY = (b'{"id":"%s","task":"churn.noop","args":[1,2],"queue":"churn",'
        b'"created":1796304376.1439416,"v":1}')

SIZES = """
    SELECT c.relname, c.relkind, pg_relation_size(c.oid)
           + coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %s AND c.relkind IN ('r', 'i') ORDER BY c.relkind DESC, c.relname"""
STATS = """
    SELECT coalesce(sum(n_dead_tup), 0), coalesce(sum(n_live_tup), 0),
           coalesce(sum(autovacuum_count), 0), coalesce(sum(vacuum_count), 0),
           coalesce(sum(n_tup_hot_upd), 0), coalesce(sum(n_tup_upd), 0)
    FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'conveyor_messages'"""


@dataclass
class Checkpoint:
    tasks: int
    seconds: float
    rate: float                  # tasks/s since the previous checkpoint
    sizes: dict[str, int]        # relation -> bytes
    dead: int
    live: int
    autovacuums: int
    vacuums: int
    hot_updates: int
    updates: int

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def produce(url: str, total: int, batch: int, backlog: int, acked: Any) -> None:
    """Send ``total`` tasks in batches, never more than ``backlog`` ahead of the acks."""
    broker = broker_from_url(url)  # it deletes nothing, so it never vacuums
    sent = 0
    try:
        while sent < total:
            if sent - acked.value >= backlog:
                time.sleep(0.002)
                continue
            n = min(batch, total - sent)
            envelopes = []
            for _ in range(n):
                task_id = str(uuid.uuid4())
                envelopes.append(Envelope(task_id, QUEUE, BODY % task_id.encode()))
            broker.enqueue_many(envelopes)
            sent += n
    finally:
        broker.close()


def measure(conn: psycopg.Connection[Any], schema: str, done: int, started: float,
            last: Checkpoint | None) -> Checkpoint:
    now = time.perf_counter() - started
    sizes = {name: int(size) for name, _, size in conn.execute(SIZES, (schema,))}
    dead, live, autovac, vac, hot, upd = conn.execute(STATS, (schema,)).fetchone()
    since = (done - last.tasks, now - last.seconds) if last else (done, now)
    return Checkpoint(done, now, since[0] / max(since[1], 1e-9), sizes, int(dead), int(live),
                      int(autovac), int(vac), int(hot), int(upd))


def consume(url: str, conninfo: str, schema: str, args: argparse.Namespace,
            acked: Any) -> list[Checkpoint]:
    options = {} if args.vacuum_every is None else {"vacuum_every": args.vacuum_every}
    broker = broker_from_url(url, options)
    points: list[Checkpoint] = []
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        points.append(measure(conn, schema, 0, started, None))
        print_header(points[0])
        done = 0
        while done < args.tasks:
            got = broker.reserve([QUEUE], args.reserve, lease=30, timeout=1.0)
            if got:
                broker.ack(got)
                done += len(got)
                acked.value = done
            if done >= (len(points)) * args.every or done >= args.tasks:
                points.append(measure(conn, schema, done, started, points[-1]))
                print_row(points[-1])
    broker.close()
    return points


# -- the table ---------------------------------------------------------------
def short(name: str) -> str:
    return name.removeprefix("conveyor_messages_").removeprefix("conveyor_")


def columns(point: Checkpoint) -> list[str]:
    """The messages table and its indexes one by one; the other tables together."""
    return [n for n in point.sizes if n.startswith("conveyor_messages")]


def print_header(point: Checkpoint) -> None:
    names = [short(n) for n in columns(point)]
    head = ["tasks", "tasks/s", *names, "others", "total", "dead rows", "vacuums",
            "autovacuums"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head), flush=True)


def kib(size: int) -> str:
    return f"{size / 1024:,.0f}"


def print_row(point: Checkpoint) -> None:
    mine = columns(point)
    others = sum(v for k, v in point.sizes.items() if k not in mine)
    cells = [f"{point.tasks:,}", f"{point.rate:,.0f}", *(kib(point.sizes[n]) for n in mine),
             kib(others), kib(point.total), f"{point.dead:,}", str(point.vacuums),
             str(point.autovacuums)]
    print("| " + " | ".join(cells) + " |", flush=True)


# -- setup -------------------------------------------------------------------
def prepare(dsn: str, schema: str) -> str:
    """Create the database when missing and start from an empty schema; the broker URL."""
    parsed = parse_postgres_url(dsn)
    dbname = psycopg.conninfo.conninfo_to_dict(parsed.conninfo).get("dbname", "postgres")
    admin = psycopg.conninfo.make_conninfo(parsed.conninfo, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                        (dbname,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{dbname}"')
    drop(parsed.conninfo, schema)
    joiner = "&" if "?" in dsn else "?"
    return f"{dsn}{joiner}schema={schema}"


def drop(conninfo: str, schema: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def reloptions(conninfo: str, schema: str) -> list[str]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'conveyor_messages'", (schema,)).fetchone()
    return list(row[0] or []) if row else []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pg_churn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dsn", nargs="?", default=os.environ.get("BENCH_PG_URL", DEFAULT_DSN))
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=100, help="tasks per enqueue_many")
    parser.add_argument("--reserve", type=int, default=8, help="tasks per reserve (and ack)")
    parser.add_argument("--backlog", type=int, default=2_000)
    parser.add_argument("--vacuum-every", type=int, default=None,
                        help="the broker's vacuum_every option (0: autovacuum only)")
    parser.add_argument("--schema", default="churn")
    parser.add_argument("--keep", action="store_true", help="leave the schema afterwards")
    parser.add_argument("--json", default=None, help="write the checkpoints here")
    args = parser.parse_args(argv)
    url = prepare(args.dsn, args.schema)
    conninfo = parse_postgres_url(args.dsn).conninfo
    broker_from_url(url).close()  # create the tables before the producer starts
    print(f"# {args.tasks:,} tasks, batches of {args.batch} in, {args.reserve} out, backlog "
          f"<= {args.backlog:,}; conveyor_messages options {reloptions(conninfo, args.schema)}; "
          "sizes in KiB", flush=True)
    acked = mp.get_context("spawn").Value("q", 0, lock=False)
    producer = mp.get_context("spawn").Process(
        target=produce, args=(url, args.tasks, args.batch, args.backlog, acked))
    producer.start()
    try:
        points = consume(url, conninfo, args.schema, args, acked)
    finally:
        producer.join(timeout=10)
        if producer.is_alive():
            producer.terminate()
        if not args.keep:
            drop(conninfo, args.schema)
    summary(points)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(p) for p in points], out, indent=1)


def summary(points: list[Checkpoint]) -> None:
    last = points[-1]
    print(f"\n{last.tasks:,} tasks in {last.seconds:,.0f} s ({last.tasks / last.seconds:,.0f}/s); "
          f"VACUUM ran {last.vacuums} times and autovacuum {last.autovacuums} times on "
          "conveyor_messages; "
          f"{last.hot_updates:,} of {last.updates:,} updates were HOT; "
          f"largest total {max(p.total for p in points) / 1024:,.0f} KiB, "
          f"last {last.total / 1024:,.0f} KiB")


if __name__ == "__main__":
    main()
