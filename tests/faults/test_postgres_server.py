"""Case 15: the PostgreSQL broker's server misbehaves mid-run (guarantees 1 and 8).

The suite's own PostgreSQL (``private_postgres``, ``initdb``'d once) holds
the broker, the results and the task events, in a schema of each test's own.
A producer thread sends tasks steadily while two workers run them; then one
fault strikes:

* ``terminate``: every Conveyor backend ended by ``pg_terminate_backend``,
  three times, each once work flows again;
* ``restart``: ``pg_ctl restart -m fast`` (sessions told to end, then a
  clean restart);
* ``immediate``: ``pg_ctl stop -m immediate`` (every server process quit at
  once, crash recovery at the next start), down for :data:`DOWN_FOR` seconds;
* ``lock``: another client holds ``ACCESS EXCLUSIVE`` on the messages table
  for :data:`HELD_FOR` s, longer than the lease: every reserve, ack, renewal
  and enqueue waits behind it;
* ``statement_timeout``: the server's ``statement_timeout`` set to 200 ms
  while that lock is held, so the waiting statements are cancelled instead.

Then, whatever the fault: every enqueue that returned an id completed (the
ledger's total-queue check); a task ran twice only if its message was still
in the table when the fault struck (queued, prefetched, running, or finished
but not yet acknowledged: the table is read just before) or was sent while
it lasted; nothing is left in the tables; both workers are alive with no
child deaths; and every enqueue that failed raised a ``BrokerUnavailable``
naming the server, quickly, with no password (one is planted in the URL;
the server's ``trust`` never asks for it).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import BrokerUnavailable

from ..integration.processes import Ledger, wait_for
from ..postgres_servers import PostgresServer
from .harness import (
    LEASE,
    Figures,
    Producer,
    Workers,
    assert_nothing_lost,
    recover_and_drain,
    report,
    wait_ready,
)

PLANTED = "Pl4nted-pg-s3cret"
DOWN_FOR = 1.0  # seconds the server stays down after an immediate shutdown
HELD_FOR = 2.5  # seconds the other client holds its lock (longer than LEASE)
TERMINATIONS = 3


@dataclass
class Run:
    """What a fault needs to strike, and what it tells the test back."""

    server: PostgresServer
    schema: str
    ledger: Ledger
    producer: Producer
    faults: int = 0
    back_at: float = 0.0  # monotonic time the fault ended
    notes: list[str] = field(default_factory=list)

    def admin(self) -> object:
        import psycopg

        return psycopg.connect(self.server.dsn(), autocommit=True,
                               application_name="fault-test")

    def ends(self) -> int:
        return len(self.ledger.events("end"))

    def queued(self) -> set[str]:
        """The task ids whose messages are in the broker now, whatever their state."""
        with self.admin() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(f'SELECT id FROM "{self.schema}".conveyor_messages').fetchall()
        return {str(message_id).split("~", 1)[0] for (message_id,) in rows}


def terminate(run: Run) -> None:
    for _ in range(TERMINATIONS):
        ended = run.ends()
        with run.admin() as conn:  # type: ignore[attr-defined]
            run.faults += len(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'conveyor'").fetchall())
        run.back_at = time.monotonic()
        wait_for(lambda e=ended: run.ends() > e + 5, 30, "work to flow between terminations")
    run.notes.append(f"{TERMINATIONS} rounds, {run.faults} backends")


def restart(run: Run) -> None:
    run.server.restart("fast")
    run.back_at = time.monotonic()
    run.faults = 1


def immediate(run: Run) -> None:
    run.server.stop("immediate")
    time.sleep(DOWN_FOR)  # the fault itself: the server stays down this long
    run.server.start()
    run.back_at = time.monotonic()
    run.faults = 1
    run.notes.append(f"down {DOWN_FOR:g}s + crash recovery")


def lock(run: Run, timeout_ms: int = 0) -> None:
    with run.admin() as conn:  # type: ignore[attr-defined]
        if timeout_ms:
            conn.execute(f"ALTER SYSTEM SET statement_timeout = {timeout_ms}")
            conn.execute("SELECT pg_reload_conf()")
        conn.execute("SET statement_timeout = 0")  # the locker's own wait is not cut short
        try:
            with conn.transaction():
                conn.execute(f'LOCK TABLE "{run.schema}".conveyor_messages '
                             "IN ACCESS EXCLUSIVE MODE")
                time.sleep(HELD_FOR)  # the fault itself: the lock is held this long
        finally:
            if timeout_ms:
                conn.execute("ALTER SYSTEM RESET statement_timeout")
                conn.execute("SELECT pg_reload_conf()")
    run.back_at = time.monotonic()
    run.faults = 1
    run.notes.append(f"held {HELD_FOR:g}s" + (f", timeout {timeout_ms}ms" if timeout_ms else ""))


def statement_timeout(run: Run) -> None:
    lock(run, timeout_ms=200)


FAULTS: dict[str, tuple[str, Callable[[Run], None]]] = {
    "terminate": ("backends terminated", terminate),
    "restart": ("pg_ctl restart -m fast", restart),
    "immediate": ("immediate shutdown + start", immediate),
    "lock": ("ACCESS EXCLUSIVE lock past the lease", lock),
    "statement_timeout": ("statement_timeout under a lock", statement_timeout),
}


@pytest.fixture
def fault_schema(private_postgres: PostgresServer) -> Iterator[str]:
    import psycopg

    name = f"f_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(private_postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_postgres_fault_mid_run(fault: str, private_postgres: PostgresServer, fault_schema: str,
                                tmp_path: Path) -> None:
    url = f"{private_postgres.dsn('postgres', PLANTED)}?schema={fault_schema}"
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(url, ledger, tmp_path)
    client = Conveyor("producer", broker=url, set_as_current=False)
    producer = Producer(client)
    thread = threading.Thread(target=producer.run, daemon=True)
    run = Run(private_postgres, fault_schema, ledger, producer)
    description, strike = FAULTS[fault]
    try:
        procs = [workers.start("-c", "2"), workers.start("-c", "2")]
        for proc in procs:
            wait_ready(workers, proc)
        thread.start()
        wait_for(lambda: run.ends() >= 20, 30, "work to flow")

        sent_before = len(producer.accepted)
        still_queued = run.queued()
        strike(run)
        sent_by_end = len(producer.accepted)
        recovery, ids, total = recover_and_drain(client.broker, ledger, producer, thread,
                                                 run.back_at)
        # A task may repeat only if its message was still in the broker when the fault
        # struck (queued, prefetched, running, or finished but not yet acknowledged), or
        # was sent while it lasted; one acknowledged before it, or sent after, may not.
        sent_during = set(ids[sent_before:sent_by_end])
        assert_nothing_lost(total, may_repeat=still_queued | sent_during)

        for error in producer.errors:
            assert isinstance(error, BrokerUnavailable), repr(error)
            assert f"PostgreSQL at 127.0.0.1:{private_postgres.port}/postgres" in str(error)
            assert PLANTED not in str(error)
        if fault == "immediate":
            assert producer.errors, "enqueues while the server was down must fail"
        if fault == "statement_timeout":
            assert any("the server cancelled the statement" in str(e) for e in producer.errors)
        assert producer.slowest < HELD_FOR + 3.0, f"an enqueue hung {producer.slowest:.1f}s"
        assert all(proc.poll() is None for proc in procs), "a worker exited"
        logs = workers.logs()
        deaths = logs.count("exited with")
        assert deaths == 0, "a worker child died during the fault"
        assert PLANTED not in logs
        report(Figures(f"15 PG broker: {description}", "postgres", len(ids), run.faults,
                       len(total.lost), len(total.duplicates), recovery,
                       ", ".join([*run.notes, f"{len(producer.errors)} sends refused",
                                  f"slowest send {producer.slowest:.1f}s",
                                  f"lease {LEASE:g}s"])))
    finally:
        producer.stop.set()
        workers.stop_all()
        client.close()

