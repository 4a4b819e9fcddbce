"""The PostgreSQL broker behind a real PgBouncer, in session and in transaction pooling.

Each mode has a ``pgbouncer`` of the module's own (``tests/postgres_servers.py``)
in front of the shared test server.  Through it run: the broker contract's
rules that move messages (enqueue, reserve, ack, nack, delay, dead letters,
revocation, idempotency), and a real worker process running tasks whose
results come back through the same pooler.  The worker's pick-up latency
tells whether ``LISTEN`` works: at once with session pooling or with a direct
``listen_url``; within ``poll_interval`` (1 s) with transaction pooling and
no ``listen_url``, where nothing listens (docs/decisions/0018-postgres-behind-pgbouncer.md).

A password is planted in every URL (``auth_type = trust`` never asks for it)
and looked for in every log.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from conveyor import Conveyor
from conveyor.brokers import Envelope, broker_from_url
from conveyor.exceptions import BrokerError

from ..conftest import PG_DSN, require_service, require_tool
from ..contract.broker_contract import BrokerContract
from ..postgres_servers import PgBouncer, with_host
from .processes import Ledger, start_worker, stop, worker_env

pytestmark = pytest.mark.postgres

PLANTED = "Pl4nted-pgb-s3cret"
POLL = 1.0  # the broker's default poll_interval: the bound without LISTEN
SAMPLES = 4


def _bouncer(mode: str) -> Iterator[PgBouncer]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_tool("pgbouncer", PgBouncer.binary() is not None)
    # Session pooling pins a server connection per client connection: a threads
    # worker and a client use 11 at their peak, the latency probe a few more.
    bouncer = PgBouncer(mode, pool_size=24 if mode == "session" else 12)
    bouncer.start()
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="module")
def session_bouncer() -> Iterator[PgBouncer]:
    yield from _bouncer("session")


@pytest.fixture(scope="module")
def transaction_bouncer() -> Iterator[PgBouncer]:
    yield from _bouncer("transaction")


@pytest.fixture(params=["session", "transaction"])
def bouncer(request: pytest.FixtureRequest) -> PgBouncer:
    found: PgBouncer = request.getfixturevalue(f"{request.param}_bouncer")
    return found


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema of this test's own, dropped afterwards (as the ``pg_url`` fixture's)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def through(bouncer: PgBouncer, schema: str, listen_url: str | None = None) -> str:
    """The URL that reaches the test database through ``bouncer``, as a user would write it."""
    url = f"{with_host(PG_DSN, bouncer.port, PLANTED)}?schema={schema}"
    if bouncer.pool_mode == "transaction":
        url += "&pool_mode=transaction"
    if listen_url is not None:
        url += f"&listen_url={quote(listen_url, safe='')}"
    return url


def direct() -> str:
    return with_host(PG_DSN, 5432, PLANTED)


# -- the broker contract's message rules, through the pooler ------------------------
MESSAGE_RULES = {
    "test_round_trip_keeps_body_bytes", "test_blocked_reserve_wakes_on_enqueue",
    "test_expired_lease_is_handed_out_again_and_fences_the_old_holder",
    "test_requeue_without_count_keeps_delivery_count", "test_requeue_with_delay_waits",
    "test_delayed_message_is_due_within_a_second_of_its_eta",
    "test_dead_letter_keeps_reason_and_body_and_can_replay", "test_revocations",
    "test_idempotency_key_enqueues_once", "test_concurrent_idempotent_producers_make_one_message",
    "test_consumers_in_several_processes_never_share_a_message",
    "test_leases_for_leader_election",
}


class TestBrokerContractThroughPgBouncer(BrokerContract):
    """The rules in MESSAGE_RULES, which between them run every statement a worker
    and a producer send; the rest (ordering, stats, purge, rate slots) runs the
    same kinds of statements and stays with tests/contract/test_broker_postgres.py."""

    @pytest.fixture
    def url(self, bouncer: PgBouncer, schema: str) -> str:
        return through(bouncer, schema)


for _name in [n for n in vars(BrokerContract) if n.startswith("test_")]:
    if _name not in MESSAGE_RULES:
        setattr(TestBrokerContractThroughPgBouncer, _name, None)  # not collected
assert set(vars(BrokerContract)) >= MESSAGE_RULES, "a rule was renamed: update MESSAGE_RULES"


# -- transaction pooling: what breaks without pool_mode, and polling without LISTEN ---
def test_an_undeclared_transaction_pooler_is_named_in_the_error(
        transaction_bouncer: PgBouncer, schema: str) -> None:
    """Without ``pool_mode=transaction`` psycopg prepares a statement run five
    times, on a server session the pooler then gives to someone else: the
    error says what to add, and carries no password.

    The pooler hands out its most recently used server connection first, so
    another client's open transaction takes the one holding the prepared
    statement, and the broker's next enqueue gets a different one."""
    import psycopg

    url = through(transaction_bouncer, schema).replace("&pool_mode=transaction", "")
    broker = broker_from_url(url)
    error: BrokerError | None = None
    try:
        with psycopg.connect(with_host(PG_DSN, transaction_bouncer.port),
                             autocommit=True) as other:
            for n in range(10):
                for i in range(6):  # prepared from the sixth run on
                    broker.enqueue(Envelope(f"{n}-{i}", "q", b"x"))
                with other.transaction():
                    other.execute("SELECT 1")
                    try:
                        broker.enqueue(Envelope(f"{n}-after", "q", b"x"))
                    except BrokerError as exc:
                        error = exc
                        break
    finally:
        broker.close()
    assert error is not None, "prepared statements crossed sessions without an error"
    assert "add pool_mode=transaction to the URL" in str(error), error
    assert PLANTED not in str(error)


def test_without_a_listening_connection_reserve_polls_and_says_so_once(
        transaction_bouncer: PgBouncer, schema: str, caplog: pytest.LogCaptureFixture) -> None:
    """``listen_url`` unreachable: one log line, no password, and a message sent
    meanwhile is still found within ``poll_interval``."""
    unreachable = f"postgresql://postgres:{PLANTED}@127.0.0.1:1/nowhere?connect_timeout=2"
    url = through(transaction_bouncer, schema, listen_url=unreachable)
    caplog.set_level(logging.WARNING, logger="conveyor.postgres")
    consumer, producer = broker_from_url(url), broker_from_url(url)
    try:
        latencies = []
        for n in range(3):
            timer = threading.Timer(0.2, producer.enqueue, [Envelope(f"m{n}", "q", b"x")])
            began = time.monotonic()
            timer.start()
            got = consumer.reserve(["q"], 1, lease=30, timeout=5)
            latencies.append(time.monotonic() - began - 0.2)
            timer.join()
            assert [d.id for d in got] == [f"m{n}"]
            consumer.ack(got)
    finally:
        consumer.close()
        producer.close()
    assert max(latencies) < POLL + 0.5, latencies
    said = [r.getMessage() for r in caplog.records if "cannot LISTEN" in r.getMessage()]
    assert len(said) == 1, said
    assert "127.0.0.1:1/nowhere" in said[0]
    assert not any(PLANTED in r.getMessage() for r in caplog.records)


def test_transaction_pooling_without_listen_url_says_once_that_nothing_listens(
        transaction_bouncer: PgBouncer, schema: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One line per process, however many stores and waits: they all poll."""
    from conveyor import _postgres
    from conveyor.resultstores import result_store_from_url

    monkeypatch.setattr(_postgres, "_TOLD_NO_LISTEN", set())  # as in a new process
    url = through(transaction_bouncer, schema)
    caplog.set_level(logging.WARNING, logger="conveyor.postgres")
    broker, other, results = broker_from_url(url), broker_from_url(url), result_store_from_url(url)
    try:
        for _ in range(2):
            assert broker.reserve(["q"], 1, lease=30, timeout=0.1) == []
            assert other.reserve(["q"], 1, lease=30, timeout=0.1) == []
            assert results.wait("no-such-task", timeout=0.1) is None
    finally:
        for store in (broker, other, results):
            store.close()
    said = [r.getMessage() for r in caplog.records if "nothing LISTENs" in r.getMessage()]
    assert said == [f"PostgreSQL at 127.0.0.1:{transaction_bouncer.port}/{PG_DSN.rsplit('/', 1)[1]}"
                    ": pool_mode=transaction and no listen_url, so nothing LISTENs: waiting "
                    "workers and result waits poll (the broker every poll_interval) instead of "
                    "waking on NOTIFY"]


# -- a real worker, results through the pooler, pick-up latency ----------------------
@pytest.mark.parametrize(("mode", "listen"), [
    ("session", False), ("transaction", False), ("transaction", True)])
def test_a_worker_runs_tasks_through_pgbouncer(mode: str, listen: bool, schema: str,
                                               tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    bouncer: PgBouncer = request.getfixturevalue(f"{mode}_bouncer")
    url = through(bouncer, schema, listen_url=direct() if listen else None)
    ledger = Ledger(tmp_path / "ledger.txt")
    log = tmp_path / "worker.log"
    app = Conveyor("pgbouncer-client", broker=url, set_as_current=False)
    # The latency probe reads results straight from the server, woken by NOTIFY, so
    # that its own wait does not add a poll to what it measures.
    probe = Conveyor("pgbouncer-probe", broker=url, set_as_current=False,
                     backend=f"{direct()}?schema={schema}")
    worker = start_worker(worker_env(url, ledger.path), "-P", "threads", "-c", "2", log=log)
    try:
        results = [app.send_task("tests.integration.worker_app.work", [0.01])
                   for _ in range(10)]
        assert all(isinstance(r.get(timeout=30), int) for r in results)  # via the pooler
        assert sorted(ledger.count("end").values()) == [1] * 10
        latencies = [_pick_up_latency(probe, offset=(n + 0.5) / SAMPLES * POLL)
                     for n in range(SAMPLES)]
    finally:
        stop(worker)
        app.close()
        probe.close()
    text = log.read_text(errors="replace")
    assert PLANTED not in text
    print(f"pgbouncer {mode} listen_url={listen}: pick-up latency median "
          f"{statistics.median(latencies):.3f}s max {max(latencies):.3f}s")
    if mode == "transaction" and not listen:
        assert "nothing LISTENs" in text, text[-3000:]
        assert max(latencies) < POLL + 0.5, latencies  # found by the poll, within poll_interval
    else:
        assert "nothing LISTENs" not in text
        assert statistics.median(latencies) < 0.3, latencies  # woken by NOTIFY


def _pick_up_latency(app: Conveyor, offset: float) -> float:
    """Seconds from sending a task to a worker starting it, sent ``offset`` s into an idle
    spell (spreading the sends over the worker's poll cycle)."""
    time.sleep(offset)  # the idle spell is what is measured against, not a wait for state
    sent = time.time()
    began = app.send_task("tests.integration.worker_app.started_at").get(timeout=10)
    return float(began) - sent
