"""SQLite broker and result store: what the shared contract cannot check.

Many processes on one file, a writer killed mid-transaction, forks, bad
URLs and bad files, and the polling that stands in for notifications.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import states
from conveyor.brokers import broker_from_url
from conveyor.brokers import sqlite as sqlite_broker
from conveyor.brokers.base import Envelope
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.exceptions import BrokerError, ConfigurationError
from conveyor.resultstores import result_store_from_url
from conveyor.resultstores import sqlite as sqlite_results
from conveyor.resultstores.record import Attempt
from conveyor.resultstores.sqlite import SQLiteResultStore

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "conveyor.db"


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"  # an absolute path: four slashes


@pytest.fixture
def broker(url: str) -> Iterator[SQLiteBroker]:
    b = SQLiteBroker(url)
    yield b
    b.close()


def env(message_id: str, queue: str = "q", priority: int = 0, **kw: Any) -> Envelope:
    return Envelope(message_id, queue, message_id.encode(), priority, **kw)


def sql(db_path: Path, statement: str) -> list[tuple[Any, ...]]:
    """Look at the file from outside Conveyor."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(statement).fetchall()
    finally:
        conn.close()


# -- URLs and options --------------------------------------------------------


@pytest.mark.parametrize("memory_url", ["sqlite:///:memory:", "sqlite://", "sqlite:///"])
def test_in_memory_database_is_refused_with_a_pointer_to_memory_scheme(memory_url: str) -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        broker_from_url(memory_url)
    with pytest.raises(ConfigurationError, match="memory://"):
        result_store_from_url(memory_url)


def test_relative_path_is_resolved_once_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    b = SQLiteBroker("sqlite:///relative.db")
    monkeypatch.chdir("/")
    b.enqueue(env("m"))  # still the file created under tmp_path
    assert sql(tmp_path / "relative.db", "SELECT id FROM conveyor_messages") == [("m",)]
    b.close()


def test_host_in_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no host"):
        SQLiteBroker("sqlite://localhost/conveyor.db")


def test_synchronous_full_from_the_url(url: str) -> None:
    b = SQLiteBroker(url + "?synchronous=FULL")
    conn = b._db.connection()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    b.close()
    default = SQLiteBroker(url)
    assert default._db.connection().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    default.close()


def test_unknown_options_are_reported(url: str) -> None:
    with pytest.raises(ConfigurationError, match="fsync"):
        SQLiteBroker(url + "?fsync=1")
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        broker_from_url(url, {"visibility_timeout": 3600})
    with pytest.raises(ConfigurationError, match="synchronous"):
        SQLiteBroker(url + "?synchronous=SOMETIMES")
    b = broker_from_url(url, {"busy_timeout": 2, "poll_interval": 0.02})
    assert b.ping()
    b.close()


# -- bad files ---------------------------------------------------------------


def test_corrupt_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(BrokerError, match=str(path)):
        SQLiteBroker(f"sqlite:///{path}")
    with pytest.raises(BrokerError, match=str(path)):
        SQLiteResultStore(f"sqlite:///{path}")


def test_missing_directory_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "conveyor.db"
    with pytest.raises(BrokerError, match="no-such-dir"):
        SQLiteBroker(f"sqlite:///{path}")


def test_file_from_a_newer_conveyor_is_refused(url: str, db_path: Path) -> None:
    SQLiteBroker(url).close()
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE conveyor_schema SET version = 99 WHERE component = 'broker'")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigurationError, match="newer"):
        SQLiteBroker(url)
    SQLiteResultStore(url).close()  # the other component's schema is unaffected


# -- one file, two components -------------------------------------------------


def test_broker_and_result_store_share_one_file(url: str, db_path: Path) -> None:
    b, s = SQLiteBroker(url), SQLiteResultStore(url)
    b.enqueue(env("m"))
    s.set("m", states.SUCCESS, b"3", 60)
    [d] = b.reserve(["q"], 1, lease=30, timeout=0)
    assert b.ack([d]) == [True]
    assert s.get("m") is not None
    tables = {name for (name,) in sql(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert all(name.startswith("conveyor_") for name in tables)
    assert {"conveyor_messages", "conveyor_results", "conveyor_schema"} <= tables
    b.close()
    s.close()


# -- ordering and the fallback without RETURNING --------------------------------


def test_priority_then_queue_order_then_fifo_across_queues(broker: SQLiteBroker) -> None:
    broker.enqueue_many([
        env("c-late", "c", 7), env("a-now", "a"), env("b-late", "b", 7),
        env("c-now", "c"), env("a-now2", "a"), env("b-now", "b"),
    ])
    got = broker.reserve(["b", "a", "c", "b"], 10, lease=30, timeout=0)
    assert [d.id for d in got] == ["b-now", "a-now", "a-now2", "c-now", "b-late", "c-late"]


def test_mixed_keyed_and_plain_batch_keeps_its_order(broker: SQLiteBroker) -> None:
    ids = broker.enqueue_many([
        env("1"), env("2", idempotency_key="k", idempotency_ttl=60), env("3"),
        env("4", idempotency_key="k", idempotency_ttl=60), env("5"),
    ])
    assert ids == ["1", "2", "3", "2", "5"]
    assert [d.id for d in broker.reserve(["q"], 10, 30, 0)] == ["1", "2", "3", "5"]


def test_works_without_update_returning(broker: SQLiteBroker,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_broker, "HAS_RETURNING", False)
    broker.enqueue_many([env("a"), env("b", priority=5), env("c")])
    got = broker.reserve(["q"], 3, lease=30, timeout=0)
    assert [d.id for d in got] == ["a", "c", "b"]
    assert [d.deliveries for d in got] == [1, 1, 1]
    assert all(broker.dead_letter(d, "bad") for d in got)
    assert broker.replay_dead("q", ["a"]) == 1
    assert broker.replay_dead("q") == 2
    assert {d.id for d in broker.reserve(["q"], 3, lease=30, timeout=0)} == {"a", "b", "c"}


def test_reserve_says_which_tasks_are_revoked(broker: SQLiteBroker) -> None:
    """Read in the lease transaction, so a consumer need not ask again."""
    broker.revoke(["t1", "t3"], ttl=60)
    broker.revoke(["gone"], ttl=-1)  # expired: not revoked any more
    broker.enqueue_many([env("t1"), env("t2"), env("t3~1"), env("gone")])
    got = broker.reserve(["q"], 4, lease=30, timeout=0)
    assert {d.id: d.revoked for d in got} == {"t1": True, "t2": False, "t3~1": True,
                                              "gone": False}


# -- locking -----------------------------------------------------------------


def _hold_write_lock(db_path: Path, seconds: float, held: threading.Event) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_a_writer_waits_for_the_lock_and_gets_it_once_free(broker: SQLiteBroker,
                                                           db_path: Path) -> None:
    """Waiting is Conveyor's (the connection's own busy timeout is 0): short
    steps, so the write goes through soon after the holder commits."""
    assert broker._db.connection().execute("PRAGMA busy_timeout").fetchone()[0] == 0
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db_path, 0.3, held))
    holder.start()
    assert held.wait(5)
    start = time.monotonic()
    broker.enqueue(env("after-the-lock"))
    waited = time.monotonic() - start
    holder.join()
    assert 0.2 <= waited < 2.0
    assert [d.id for d in broker.reserve(["q"], 1, lease=30, timeout=0)] == ["after-the-lock"]


def test_a_lock_held_past_the_busy_timeout_is_an_error_naming_the_file(
        url: str, db_path: Path) -> None:
    b = broker_from_url(url, {"busy_timeout": 0.2})
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db_path, 1.5, held))
    holder.start()
    assert held.wait(5)
    start = time.monotonic()
    try:
        with pytest.raises(BrokerError, match=r"stayed locked for more than 0\.2 s"):
            b.enqueue(env("refused"))
        assert time.monotonic() - start < 1.2  # gave up at its timeout, not the holder's commit
    finally:
        holder.join()
    assert b.stats(["q"])[0].ready == 0
    b.close()


# -- polling -----------------------------------------------------------------


def _count_statements(broker: SQLiteBroker) -> list[str]:
    seen: list[str] = []
    broker._db.connection().set_trace_callback(seen.append)
    return seen


def test_idle_reserve_does_not_hammer_the_database(broker: SQLiteBroker, url: str) -> None:
    other = SQLiteBroker(url)
    stop = threading.Event()

    def busy_neighbour() -> None:  # commits to another queue, changing data_version
        for i in itertools.count():
            if stop.wait(0.01):
                return
            other.enqueue(env(f"n{i}", "elsewhere"))

    neighbour = threading.Thread(target=busy_neighbour)
    neighbour.start()
    statements = _count_statements(broker)
    try:
        assert broker.reserve(["q"], 1, lease=30, timeout=1.0) == []
    finally:
        stop.set()
        neighbour.join()
        other.close()
    writes = [s for s in statements if s.startswith("BEGIN IMMEDIATE")]
    polls = [s for s in statements if "data_version" in s]
    assert len(writes) == 1  # the peeks that follow commits elsewhere are read-only
    assert 10 <= len(polls) <= 200  # a backoff towards 50 ms, not a busy loop


def test_reserve_wakes_for_an_expiring_lease_inside_a_long_wait(broker: SQLiteBroker) -> None:
    broker.enqueue(env("job"))
    [first] = broker.reserve(["q"], 1, lease=0.3, timeout=0)
    start = time.monotonic()
    [again] = broker.reserve(["q"], 1, lease=30, timeout=5)
    assert again.id == first.id and again.deliveries == 2
    assert time.monotonic() - start < 1.0  # the lease ends at 0.3 s


def test_result_wait_round_trip_is_fast(url: str) -> None:
    waiter, writer = SQLiteResultStore(url), SQLiteResultStore(url)
    lags = []
    for i in range(10):
        written = [0.0]

        def finish(task_id: str = f"t{i}", mark: list[float] = written) -> None:
            time.sleep(0.02)
            writer.set(task_id, states.SUCCESS, b"ok", 60)
            mark[0] = time.monotonic()

        thread = threading.Thread(target=finish)
        thread.start()
        got = waiter.wait(f"t{i}", timeout=5)
        lags.append(time.monotonic() - written[0])
        thread.join()
        assert got is not None and got.payload == b"ok"
    assert sorted(lags)[len(lags) // 2] < 0.02  # the median wake-up comes well under 20 ms


def test_opportunistic_cleanup(url: str, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_results, "CLEANUP_EVERY", 10)
    s = SQLiteResultStore(url)
    s.set_many([(f"old{i}", states.SUCCESS, b"x") for i in range(5)], ttl=-1)
    assert sql(db_path, "SELECT count(*) FROM conveyor_results") == [(5,)]
    for i in range(5):
        s.set(f"new{i}", states.SUCCESS, b"x", 60)
    assert sql(db_path, "SELECT count(*) FROM conveyor_results") == [(5,)]
    s.close()


def test_expired_keys_and_revocations_are_swept(broker: SQLiteBroker, db_path: Path) -> None:
    broker.enqueue(env("a", idempotency_key="k", idempotency_ttl=0.01))
    broker.revoke(["t"], ttl=0.01)
    time.sleep(0.05)
    broker._housekeeping_due = 0.0
    broker.enqueue(env("b"))
    assert sql(db_path, "SELECT count(*) FROM conveyor_keys") == [(0,)]
    assert sql(db_path, "SELECT count(*) FROM conveyor_revoked") == [(0,)]


# -- fenced writes and the chord's failure half --------------------------------


def _record(attempt: Attempt, value: str) -> bytes:
    return f'{{"attempt": {attempt.as_list()}, "result": "{value}"}}'.encode()


def test_fenced_write_refuses_a_stale_run(url: str) -> None:
    s = SQLiteResultStore(url)
    stale, newer = Attempt(1, 0, 1), Attempt(1, 0, 2)
    assert s.set_fenced("t", states.SUCCESS, _record(newer, "new"), 60, newer) is True
    assert s.set_fenced("t", states.SUCCESS, _record(stale, "old"), 60, stale) is False
    got = s.get("t")
    assert got is not None and b'"new"' in got.payload
    s.close()


def test_a_first_record_is_one_statement_and_a_later_one_is_still_fenced(url: str) -> None:
    """The usual write (no record yet) is a single autocommit insert; once a
    record exists the fenced read-compare-write transaction decides."""
    s = SQLiteResultStore(url)
    seen: list[str] = []
    s._db.connection().set_trace_callback(seen.append)
    first, later, stale = Attempt(1, 0, 1), Attempt(1, 0, 3), Attempt(1, 0, 2)
    assert s.set_fenced("t", states.STARTED, _record(first, "started"), 60, first) is True
    assert [q.split()[0] for q in seen] == ["INSERT"]
    assert s.set_fenced("t", states.SUCCESS, _record(later, "done"), 60, later) is True
    assert s.set_fenced("t", states.SUCCESS, _record(stale, "stale"), 60, stale) is False
    got = s.get("t")
    assert got is not None and got.state == states.SUCCESS and b'"done"' in got.payload
    s.close()


def test_an_expired_record_does_not_fence_a_new_write(url: str) -> None:
    s = SQLiteResultStore(url)
    newer, older = Attempt(1, 0, 5), Attempt(1, 0, 1)
    s.set("t", states.SUCCESS, _record(newer, "gone"), -1)  # expired at once
    assert s.get("t") is None
    assert s.set_fenced("t", states.SUCCESS, _record(older, "kept"), 60, older) is True
    got = s.get("t")
    assert got is not None and b'"kept"' in got.payload
    s.close()


def test_chord_fail_closes_the_join_once(url: str) -> None:
    s = SQLiteResultStore(url)
    assert s.chord_add("c", 0, 2, b"0", 60) is None
    assert s.chord_fail("c", 60) is True
    assert s.chord_fail("c", 60) is False
    assert s.chord_add("c", 1, 2, b"1", 60) is None  # the body never fires
    assert s.chord_add("d", 0, 1, b"0", 60) == [b"0"]
    assert s.chord_fail("d", 60) is False  # too late: the body already fired
    s.close()


def _join_or_fail(url: str, indexes: list[int], size: int, fail_at: int | None,
                  out: Any) -> None:
    s = SQLiteResultStore(url)
    outcomes = []
    for i in indexes:
        if i == fail_at:
            outcomes.append("failed" if s.chord_fail("mixed", 60) else None)
        elif s.chord_add("mixed", i, size, b"x", 60) is not None:
            outcomes.append("fired")
    out.put([o for o in outcomes if o])


def test_a_chord_either_fires_or_fails_exactly_once_across_processes(url: str) -> None:
    size = 200
    out = FORK.Queue()
    procs = [
        FORK.Process(target=_join_or_fail,
                     args=(url, list(range(k, size, 4)), size, 150 if k == 2 else None, out))
        for k in range(4)
    ]
    for p in procs:
        p.start()
    outcomes = [o for _ in procs for o in out.get(timeout=60)]
    for p in procs:
        p.join(10)
    assert outcomes == ["failed"]  # member 150 failed, so the set can never complete


# -- processes ---------------------------------------------------------------


def _open_at_once(url: str, barrier: Any, out: Any, index: int) -> None:
    try:
        barrier.wait(10)
        b, s = SQLiteBroker(url), SQLiteResultStore(url)
        b.enqueue(env(f"m{index}"))
        s.set(f"m{index}", states.SUCCESS, b"x", 60)
        out.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test
        out.put(repr(exc))


def test_concurrent_first_connects_to_a_new_file(url: str, db_path: Path) -> None:
    barrier, out = FORK.Barrier(8), FORK.Queue()
    procs = [FORK.Process(target=_open_at_once, args=(url, barrier, out, i)) for i in range(8)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert results == ["ok"] * 8
    assert sql(db_path, "SELECT count(*) FROM conveyor_messages") == [(8,)]


def _produce_and_consume(url: str, index: int, per_process: int, total: int,
                         consumed: Any, out: Any) -> None:
    seen: list[tuple[str, int]] = []
    errors: list[str] = []
    try:
        b = SQLiteBroker(url)
        pending = [env(f"{index}-{i}") for i in range(per_process)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if pending:
                batch, pending = pending[:7], pending[7:]
                if len(batch) % 2:
                    b.enqueue(batch[0])
                    batch = batch[1:]
                b.enqueue_many(batch)
            got = b.reserve(["q"], 5, lease=30, timeout=0 if pending else 0.1)
            if got:
                if not all(b.ack(got)):
                    errors.append("an ack lost its lease")
                seen.extend((d.id, d.deliveries) for d in got)
                with consumed.get_lock():
                    consumed.value += len(got)
            elif not pending and consumed.value >= total:
                break
    except Exception as exc:  # reported to the parent, which fails the test
        errors.append(repr(exc))
    out.put((seen, errors))


def test_eight_processes_produce_and_consume_without_loss_or_duplicates(url: str) -> None:
    SQLiteBroker(url).close()  # create the file; the first connects are tested above
    processes, per_process = 8, 250
    total = processes * per_process
    consumed, out = FORK.Value("i", 0), FORK.Queue()
    procs = [
        FORK.Process(target=_produce_and_consume,
                     args=(url, i, per_process, total, consumed, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    reports = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(10)
    errors = [e for _, errs in reports for e in errs]
    assert errors == []
    seen = [item for part, _ in reports for item in part]
    ids = [message_id for message_id, _ in seen]
    assert len(ids) == len(set(ids)) == total
    assert set(ids) == {f"{p}-{i}" for p in range(processes) for i in range(per_process)}
    assert {deliveries for _, deliveries in seen} == {1}


def _write_until_killed(url: str, log_path: str) -> None:
    b = SQLiteBroker(url)
    body = os.urandom(1024)
    with open(log_path, "a") as log:
        for n in itertools.count():
            b.enqueue_many([Envelope(f"{os.getpid()}-{n}-{i}", "q", body) for i in range(400)])
            log.write(f"{os.getpid()}-{n}\n")  # written only after the commit returned
            log.flush()


def test_sigkill_mid_write_leaves_a_sound_database(url: str, db_path: Path,
                                                   tmp_path: Path) -> None:
    log_path = tmp_path / "committed.log"
    log_path.touch()
    for delay in (0.3, 0.45, 0.6):
        writer = FORK.Process(target=_write_until_killed, args=(url, str(log_path)))
        writer.start()
        time.sleep(delay)
        os.kill(writer.pid, signal.SIGKILL)  # type: ignore[arg-type]
        writer.join(10)
        assert writer.exitcode == -signal.SIGKILL
        assert sql(db_path, "PRAGMA integrity_check") == [("ok",)]
    committed = log_path.read_text().split()
    assert committed, "the writer never committed; the test proves nothing"
    b = SQLiteBroker(url)
    found: set[str] = set()
    while got := b.reserve(["q"], 1000, lease=30, timeout=0):
        found.update(d.id.rsplit("-", 1)[0] for d in got)
        assert all(b.ack(got))
    assert set(committed) <= found
    b.close()


def _use_inherited(b: SQLiteBroker, s: SQLiteResultStore, out: Any) -> None:
    try:
        b.enqueue(env("from-child"))
        got = b.reserve(["q"], 10, lease=30, timeout=0)
        b.ack(got)
        s.set("child", states.SUCCESS, b"x", 60)
        out.put(sorted(d.id for d in got))
    except Exception as exc:  # reported to the parent, which fails the test
        out.put(repr(exc))


def test_objects_inherited_over_fork_open_their_own_connections(url: str) -> None:
    b, s = SQLiteBroker(url), SQLiteResultStore(url)
    b.enqueue(env("from-parent"))
    assert s.get("nothing") is None  # the parent's connections are open at fork time
    out = FORK.Queue()
    child = FORK.Process(target=_use_inherited, args=(b, s, out))
    child.start()
    assert out.get(timeout=30) == ["from-child", "from-parent"]
    child.join(10)
    b.enqueue(env("after"))  # the parent's connection still works
    assert [d.id for d in b.reserve(["q"], 10, lease=30, timeout=0)] == ["after"]
    assert s.get("child") is not None
    b.close()
    s.close()


def test_each_thread_uses_its_own_connection(broker: SQLiteBroker) -> None:
    conns: list[sqlite3.Connection] = []

    def grab() -> None:
        conns.append(broker._db.connection())
        broker.enqueue(env(threading.current_thread().name))

    threads = [threading.Thread(target=grab, name=f"t{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in conns}) == 4
    assert broker.stats(["q"])[0].ready == 4


def test_a_file_from_before_the_priority_change_gets_the_new_index(url: str,
                                                                   db_path: Path) -> None:
    """docs/decisions/0008: the descending ready index is replaced on open; queued rows stay."""
    first = SQLiteBroker(url)
    first.enqueue(env("old-default"))
    first.enqueue(env("old-nine", priority=9))
    first.close()
    with sqlite3.connect(db_path) as conn:  # what an older Conveyor left behind
        conn.execute("DROP INDEX conveyor_messages_by_priority")
        conn.execute("""CREATE INDEX conveyor_messages_ready ON conveyor_messages
                        (queue, priority DESC, seq) WHERE state = 'ready'""")
    upgraded = SQLiteBroker(url)
    try:
        got = upgraded.reserve(["q"], 2, lease=30, timeout=0)
        assert [d.id for d in got] == ["old-default", "old-nine"]  # read in the new order
        with sqlite3.connect(db_path) as conn:
            names = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "conveyor_messages_by_priority" in names and "conveyor_messages_ready" not in names
    finally:
        upgraded.close()
