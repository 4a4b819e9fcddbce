"""What only the PostgreSQL broker has: its URL and options, its schema
versions, and connections that went stale under it."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from conveyor._postgres import parse_postgres_url
from conveyor.brokers import Envelope, broker_from_url
from conveyor.brokers.postgres import PostgresBroker
from conveyor.exceptions import BrokerUnavailable, ConfigurationError

from .processes import wait_for

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(("url", "options", "expected"), [
    ("postgresql://u:s3cret@127.0.0.1/db?schema=Bad-Name", {}, "schema 'Bad-Name'"),
    ("postgresql://u:s3cret@127.0.0.1/db", {"visibility_timeout": 5},
     "visibility_timeout: not understood by the PostgreSQL broker"),
    ("postgresql://u:s3cret@127.0.0.1/db", {"poll_interval": 0}, "poll_interval=0"),
    ("postgresql://u:s3cret@127.0.0.1/db?pool_mode=statement", {},
     "statement pooling cannot run the transactions"),
    ("postgresql://u:s3cret@127.0.0.1/db?pool_mode=Transaction", {}, "pool_mode='Transaction'"),
    ("postgresql://u:s3cret@127.0.0.1/db?listen_url=redis%3A%2F%2Fu%3As3cret%40h", {},
     "listen_url 'redis://u:\\*+@h' is not a postgresql:// URL"),
    ("postgresql://u:s3cret@h/db?listen_url=postgresql%3A%2F%2Fu%3As3cret%40d%2Fdb%3Fschema%3Dx",
     {}, "listen_url in .* carries schema: set them on the main URL"),
    ("postgresql://u:s3cret@127.0.0.1/db", {"listen_url": "postgresql://u:s3cret@h/db"},
     r"listen_url: put it in the URL \(\?listen_url=...\), where the result"),
    ("postgresql://u:s3cret@127.0.0.1/db", {"socket_timeout": 2},
     r"socket_timeout: put it in the URL \(\?socket_timeout=...\), where the result"),
])
def test_bad_urls_and_options_are_refused_by_name(url: str, options: dict[str, object],
                                                  expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as info:
        broker_from_url(url, options)
    assert "s3cret" not in str(info.value)


def test_pool_mode_and_listen_url_come_from_the_url() -> None:
    """Read by every store opened from the URL, and never passed on to libpq."""
    plain = parse_postgres_url("postgresql://u:p@h/db?sslmode=disable")
    assert (plain.pool_mode, plain.prepares, plain.listen_conninfo) == (
        "session", True, plain.conninfo)
    pooled = parse_postgres_url("postgresql://u:p@b:6432/db?pool_mode=transaction&sslmode=disable")
    assert (pooled.prepares, pooled.listen_conninfo) == (False, None)
    assert pooled.conninfo == "postgresql://u:p@b:6432/db?sslmode=disable&connect_timeout=4"
    listen = quote("postgresql://u:p@db:5432/db?sslmode=require", safe="")
    direct = parse_postgres_url(f"postgresql://u:p@b:6432/db?pool_mode=transaction&listen_url={listen}")
    assert direct.listen_conninfo == (
        "postgresql://u:p@db:5432/db?sslmode=require&connect_timeout=4")
    assert (direct.address, direct.listen_address) == ("b:6432/db", "db:5432/db")


def test_timeouts_bound_every_connect_and_wait() -> None:
    """``socket_timeout`` is Conveyor's (every store reads it, libpq never sees it);
    libpq's ``connect_timeout`` defaults to 4 s instead of waiting for ever."""
    default = parse_postgres_url("postgresql://u:p@h/db")
    assert (default.socket_timeout, default.conninfo) == (
        10.0, "postgresql://u:p@h/db?connect_timeout=4")
    own = parse_postgres_url("postgresql://u:p@h/db?socket_timeout=0.5&connect_timeout=2")
    assert (own.socket_timeout, own.conninfo) == (0.5, "postgresql://u:p@h/db?connect_timeout=2")
    # libpq reads "+" as itself: a space in a parameter (options=-c ...) stays %20.
    spaced = parse_postgres_url("postgresql://u:p@h/db?options=-c%20lock_timeout%3D5s")
    assert spaced.conninfo == "postgresql://u:p@h/db?options=-c%20lock_timeout%3D5s&connect_timeout=4"
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ConfigurationError, match=f"socket_timeout='{bad}'"):
            parse_postgres_url(f"postgresql://u:s3cret@h/db?socket_timeout={bad}")
    with pytest.raises(ConfigurationError, match="carries socket_timeout"):
        parse_postgres_url("postgresql://u:p@h/db?listen_url="
                           + quote("postgresql://u:p@d/db?socket_timeout=1", safe=""))


def test_an_unreachable_server_is_broker_unavailable_without_the_password() -> None:
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1/db") as info:
        broker_from_url("postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout=2")
    assert "s3cret" not in str(info.value)


def test_a_schema_from_a_newer_conveyor_is_refused(pg_url: str) -> None:
    import psycopg

    broker_from_url(pg_url).close()
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".conveyor_schema SET version = 99 '
                     "WHERE component = 'broker'")
    with pytest.raises(ConfigurationError, match="broker schema version 99"):
        broker_from_url(pg_url)


def test_terminated_idle_connections_cost_nothing(pg_url: str) -> None:
    """A server restart or ``pg_terminate_backend`` leaves the pool's idle
    connections dead, and the server says so on each before closing it: the
    pool sees that without a round trip and makes a new connection, so reads
    and writes alike carry on."""
    broker = broker_from_url(pg_url)
    assert isinstance(broker, PostgresBroker)
    broker.enqueue(Envelope("m1", "q", b"1"))
    _terminate(pg_url, [c.info.backend_pid for c in broker._pool._idle])
    assert broker.stats(["q"])[0].ready == 1
    held = [broker._pool._take() for _ in range(4)]  # four idle ones, as a busy process has
    for conn in held:
        broker._pool._give_back(conn)
    _terminate(pg_url, [c.info.backend_pid for c in broker._pool._idle])
    for n in range(2, 6):  # each used to take a dead one and fail
        broker.enqueue(Envelope(f"m{n}", "q", b"x"))
    assert [d.id for d in broker.reserve(["q"], 10, lease=30, timeout=0)] == [
        "m1", "m2", "m3", "m4", "m5"]
    broker.close()


def test_a_write_cut_off_mid_statement_is_one_clear_error(pg_url: str) -> None:
    """Guarantee 8: an enqueue whose connection dies under it raises (it may or
    may not have happened: here it had not), and the next one works."""
    import psycopg

    broker = broker_from_url(pg_url)
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as locker:
        locker.execute("BEGIN")
        locker.execute(f'LOCK TABLE "{schema}".conveyor_queues IN ACCESS EXCLUSIVE MODE')
        failed: list[BaseException] = []
        sent = threading.Thread(target=_enqueue, args=(broker, failed))
        sent.start()
        blocked = _wait_for_blocked(locker)
        locker.execute("SELECT pg_terminate_backend(%s)", (blocked,))
        sent.join(10)
        locker.execute("ROLLBACK")
    [error] = failed
    assert isinstance(error, BrokerUnavailable), repr(error)
    assert "enqueue failed, the connection was refused or lost" in str(error)
    broker.enqueue(Envelope("m3", "q", b"3"))
    assert [d.id for d in broker.reserve(["q"], 10, lease=30, timeout=0)] == ["m3"]
    broker.close()


def test_a_client_gone_quiet_inside_a_transaction_loses_its_session(pg_url: str) -> None:
    """A transaction the pool runs tells the server how long to wait for its
    client's next statement (``socket_timeout``, at least a second): a client cut
    off between two statements (a dead path that still acknowledges bytes, which
    no keepalive notices) holds its row locks that long, not for good."""
    import psycopg

    broker = broker_from_url(f"{pg_url}&socket_timeout=1")
    assert isinstance(broker, PostgresBroker)
    broker.enqueue(Envelope("m1", "q", b"1"))
    inside: list[int] = []
    resume = threading.Event()
    failed: list[BaseException] = []

    def quiet(conn: psycopg.Connection[object]) -> None:
        conn.execute(broker.sql("SELECT 1 FROM {s}.conveyor_messages FOR UPDATE"))
        inside.append(conn.info.backend_pid)
        resume.wait(10)  # the client stops talking, holding the row

    def run() -> None:
        try:
            broker._pool.run("hold a row", quiet, transaction=True)
        except BaseException as exc:
            failed.append(exc)

    holder = threading.Thread(target=run)
    holder.start()
    wait_for(lambda: inside, 5, "the transaction to lock the row")
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as watcher:
        wait_for(lambda: watcher.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                         (inside[0],)).fetchone() is None,
                 4, "the server to end the quiet session")
    assert [d.id for d in broker.reserve(["q"], 10, lease=30, timeout=0)] == ["m1"]
    resume.set()
    holder.join(10)
    [error] = failed  # its COMMIT finds the session gone: a clear error, not a hang
    assert isinstance(error, BrokerUnavailable), repr(error)
    broker.close()


def test_a_reserve_is_one_message_the_server_commits_alone(pg_url: str,
                                                          tmp_path: Path) -> None:
    """The reserve's transaction (make due rows ready, lease, next due time) goes
    as one simple-protocol message: the server commits it without waiting for
    the client, so a path cut at any byte cannot leave its rows locked.  (It was a
    psycopg pipeline: BEGIN, then the statements, then COMMIT, three round trips,
    and the Flush psycopg sends after each Sync disarms the server's
    idle_in_transaction_session_timeout, so a cut before COMMIT held the rows
    for as long as the dead socket lived.)"""
    from psycopg import pq

    broker = broker_from_url(pg_url)
    assert isinstance(broker, PostgresBroker)
    broker.enqueue(Envelope("m1", "q", b"1"))
    trace = tmp_path / "trace.txt"
    with broker._pool.connection() as conn, trace.open("w") as out:
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        got, _ = broker._reserve_once(conn, ["q"], 10, 30)
        conn.pgconn.untrace()
    assert [d.id for d in got] == ["m1"]
    sent = [line.split("\t")[2].strip() for line in trace.read_text().splitlines()
            if line.startswith("F\t")]
    assert sent == ["Query"], sent
    broker.close()


def _enqueue(broker: object, failed: list[BaseException]) -> None:
    try:
        broker.enqueue(Envelope("m2", "q", b"2"))  # type: ignore[attr-defined]
    except BaseException as exc:
        failed.append(exc)


def _wait_for_blocked(conn: object) -> int:
    """The pid of the backend waiting for ``conn``'s lock (bounded poll)."""
    found: list[int] = []

    def blocked() -> bool:
        found[:] = [pid for (pid,) in conn.execute(  # type: ignore[attr-defined]
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (conn.info.backend_pid,))]  # type: ignore[attr-defined]
        return bool(found)

    wait_for(blocked, 10, "the enqueue to wait for the lock")
    return found[0]


def _terminate(pg_url: str, pids: list[int]) -> None:
    """End the backends and wait until they are gone (PostgreSQL 14's timeout argument)."""
    import psycopg

    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM unnest(%s::int[]) AS pid",
                      (pids,))


def test_reserve_reports_revocations_of_the_leased_tasks(pg_url: str) -> None:
    """Reserve checks revocations while leasing (the task id is the message id up
    to its first "~"), so consumers skip the extra query, as on Redis."""
    broker = broker_from_url(pg_url)
    broker.enqueue_many([Envelope(id=i, queue="q", body=b"x") for i in ("t1", "t2~1", "t3")])
    broker.revoke(["t2", "t3"], ttl=60, terminate=True)
    broker.revoke(["t1"], ttl=-1)  # expired: not revoked any more
    got = {d.id: d.revoked for d in broker.reserve(["q"], 10, lease=30, timeout=0)}
    assert got == {"t1": False, "t2~1": True, "t3": True}
    broker.close()


# -- churn: the messages table is vacuumed as fast as it is written (ADR 0019) ----------
def _messages_stats(pg_url: str) -> tuple[int, list[str]]:
    """(manual VACUUMs PostgreSQL counted on conveyor_messages, its storage options)."""
    import psycopg

    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        row = conn.execute(
            "SELECT s.vacuum_count, c.reloptions FROM pg_stat_user_tables s "
            "JOIN pg_class c ON c.oid = s.relid "
            "WHERE s.schemaname = %s AND s.relname = 'conveyor_messages'", (schema,)).fetchone()
    return int(row[0]), list(row[1] or [])


def _churn(broker: PostgresBroker, n: int) -> None:
    broker.enqueue_many([Envelope(f"m{i}", "q", b"x") for i in range(n)])
    while got := broker.reserve(["q"], 7, lease=30, timeout=0):
        assert all(broker.ack(got))


@pytest.mark.parametrize("value", [-1, "lots", 2.5, True])
def test_a_bad_vacuum_every_is_refused(pg_url: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match="vacuum_every="):
        broker_from_url(pg_url, {"vacuum_every": value})


def test_the_acknowledging_process_vacuums_the_messages_table_every_vacuum_every(
        pg_url: str) -> None:
    broker = broker_from_url(pg_url, {"vacuum_every": 20})
    assert isinstance(broker, PostgresBroker)
    _churn(broker, 50)  # 49 acknowledged by the time of the second VACUUM
    broker.vacuum.join(timeout=30)
    assert broker.vacuum.runs >= 1
    vacuums, options = _messages_stats(pg_url)
    assert vacuums == broker.vacuum.runs
    # and autovacuum, where the server runs it, by a fixed count of dead rows
    assert {"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=10000",
            "autovacuum_vacuum_cost_delay=0", "fillfactor=80"} <= set(options)
    broker.close()


def test_vacuum_every_zero_leaves_the_table_to_autovacuum(pg_url: str) -> None:
    broker = broker_from_url(pg_url, {"vacuum_every": 0})
    assert isinstance(broker, PostgresBroker)
    _churn(broker, 30)
    broker.vacuum.join(timeout=30)
    assert broker.vacuum.runs == 0
    assert _messages_stats(pg_url)[0] == 0
    broker.close()


def test_a_role_that_may_not_vacuum_is_told_once_and_keeps_working(
        pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Workers may run as a role with fewer rights than the one that made the tables."""
    import uuid

    import psycopg

    broker_from_url(pg_url).close()  # the tables, owned by the test's own role
    schema, dsn = pg_url.rsplit("schema=", 1)[1], pg_url.split("?")[0]
    role = f"conveyor_worker_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        # opening the broker checks the schema version under CREATE ... IF NOT EXISTS
        conn.execute(f'GRANT CREATE ON DATABASE "{conn.info.dbname}" TO "{role}"')
        conn.execute(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"')
        conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" '
                     f'TO "{role}"')
    try:
        url = pg_url.replace("://postgres@", f"://{role}@", 1)
        assert url != pg_url, "the test needs the DSN's user to be postgres"
        worker = broker_from_url(url, {"vacuum_every": 5})
        assert isinstance(worker, PostgresBroker)
        with caplog.at_level("WARNING", logger="conveyor.postgres"):
            _churn(worker, 12)
            worker.vacuum.join(timeout=30)
            _churn(worker, 12)
            worker.vacuum.join(timeout=30)
        worker.close()
        warnings = [r.getMessage() for r in caplog.records if "may not VACUUM" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert role in warnings[0]
        assert worker.vacuum.runs == 0
        assert _messages_stats(pg_url)[0] == 0
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def test_a_version_2_schema_is_upgraded_to_the_churn_settings(pg_url: str) -> None:
    """What ``conveyor db upgrade`` and the Django migrations run: opening the broker."""
    import psycopg

    broker_from_url(pg_url).close()
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{schema}".conveyor_messages RESET '
                     "(autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
                     "autovacuum_vacuum_cost_delay)")
        conn.execute(f'UPDATE "{schema}".conveyor_schema SET version = 2 '
                     "WHERE component = 'broker'")
    assert _messages_stats(pg_url)[1] == ["fillfactor=80"]
    broker_from_url(pg_url).close()
    assert "autovacuum_vacuum_threshold=10000" in _messages_stats(pg_url)[1]
