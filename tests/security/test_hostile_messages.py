"""Finding 2 of issue 15: nothing a message contains can take down a worker.

Hostile bodies (``corpus.py``, and Hypothesis-made envelopes) are written
straight into the broker, bypassing ``.delay()``'s checks, and run through
real worker processes of every pool on SQLite and Redis: the worker stays up
with the same processes, each body is dead-lettered with its reason (or runs,
where it is a valid call), and every good message sent afterwards completes.

Celery has no such guarantee to match: its worker logs and acks a message
it cannot decode (celery/worker/consumer/consumer.py on_decode_error), and a
RecursionError in its event dispatch is not contained; here the message goes
to the dead-letter queue instead (guarantee 5) and the worker carries on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import Conveyor
from conveyor.brokers import Envelope
from conveyor.testing import run_worker
from conveyor.worker import consumer as consumer_module

from ..integration.processes import ROOT, children_of, wait_for
from . import corpus

GOOD = 20


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The stores the value tests run on: PostgreSQL too (its text and bytea rules
    differ), without repeating the costly pool matrix on it."""
    name = {"postgres": "pg_url"}.get(request.param, f"{request.param}_url")
    return str(request.getfixturevalue(name))


@pytest.fixture
def client(url: str) -> Iterator[Conveyor]:
    app = Conveyor("hostile-client", broker=url, set_as_current=False)
    yield app
    app.close()


class WorkerProcess:
    """``conveyor worker`` on the hostile app, with its log and ledger."""

    def __init__(self, url: str, tmp: Path, *args: str, **env: str) -> None:
        self.ledger, self.log = tmp / "ledger.txt", tmp / "worker.log"
        environ = {**os.environ, "CONVEYOR_BROKER_URL": url, "LEDGER": str(self.ledger),
                   "PYTHONPATH": str(ROOT), "CONVEYOR_BROKER_LEASE_TIMEOUT": "5", **env}
        cmd = [sys.executable, "-m", "conveyor", "-A", corpus.APP, "worker", "-l", "WARNING",
               *args]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=environ, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def tags(self) -> set[str]:
        return set(self.ledger.read_text().split()) if self.ledger.exists() else set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


def ping_all(client: Conveyor, worker: WorkerProcess, what: str, timeout: float = 60) -> None:
    tags = {f"{what}-{i}-{uuid.uuid4().hex[:6]}" for i in range(GOOD)}
    for tag in tags:
        client.send_task(corpus.PING, [tag])
    wait_for(lambda: tags <= worker.tags() or worker.proc.poll() is not None, timeout,
             f"the good messages sent {what}")
    assert worker.proc.poll() is None, f"the worker exited:\n{worker.log.read_text()[-3000:]}"
    assert tags <= worker.tags()


def drained(client: Conveyor) -> bool:
    [stats] = client.broker.stats(["default"])
    return stats.ready + stats.inflight + stats.delayed == 0


@pytest.mark.parametrize("pool,concurrency", [("prefork", "2"), ("threads", "1"),
                                              ("async", "2"), ("solo", "1")])
def test_hostile_bodies_do_not_take_down_any_pool(client: Conveyor, tmp_path: Path,
                                                  pool: str, concurrency: str) -> None:
    """Every pool, SQLite and Redis: the corpus in the queue first, then good messages.

    With ``-P threads -c 1`` a body nested 5,000 deep used to kill the only
    consumer thread and the worker exited with status 0 (issue 15, finding 2).
    """
    hostile = corpus.envelopes()
    client.broker.enqueue_many(hostile)
    worker = WorkerProcess(client.conf.broker_url, tmp_path, "-P", pool, "-c", concurrency)
    try:
        if pool == "prefork":
            wait_for(lambda: len(children_of(worker.proc.pid)) == 2, 30, "the children")
        children = set(children_of(worker.proc.pid))
        ping_all(client, worker, "during")
        wait_for(lambda: drained(client), 120, "every hostile body settled")
        ping_all(client, worker, "after")
        assert set(children_of(worker.proc.pid)) == children, "a child died"
        [stats] = client.broker.stats(["default"])
        assert stats.dead >= len(hostile) // 2  # the rest were valid calls of echo
        letters = client.broker.dead_letters("default", limit=1000)
        assert all(letter.reason for letter in letters)
        reasons = {letter.id: letter.reason for letter in letters}
        assert "nested too deeply" in reasons["hostile-0"]  # 1,000 levels, top level
        assert "nested too deeply" in reasons["hostile-3"]  # 5,000 levels inside args
    finally:
        code = worker.stop()
    log = worker.log.read_text()
    assert code == 0, log[-3000:]
    assert "crashed" not in log and "Traceback" not in log, log[-3000:]
    assert "heartbeat failed" not in log, log[-3000:]  # no event the store refuses


def test_an_uncontainable_crash_makes_the_worker_exit_non_zero(client: Conveyor,
                                                               tmp_path: Path) -> None:
    """A supervisor that fails (here: broken on purpose) ends the worker with an
    error status, so Supervisor or systemd restart it instead of taking a clean exit."""
    worker = WorkerProcess(client.conf.broker_url, tmp_path, "-P", "threads", "-c", "1",
                           HOSTILE_BREAK_SUPERVISOR="1")
    try:
        code = worker.proc.wait(60)
    finally:
        worker.stop()
    assert code != 0
    assert "supervisor broken on purpose" in worker.log.read_text()


def test_a_dead_childs_prefetched_messages_come_back_at_once(client: Conveyor,
                                                             tmp_path: Path) -> None:
    """Issue 15: a prefork child that died held prefetched messages the supervisor
    had not been told of, so they waited a whole lease (30 s here); the loop now
    reports what it holds however it ends, and they run on the next child."""
    from conveyor._message import Message

    die = Message(id="die-1", task=corpus.PING, args=("die-1",))
    client.broker.enqueue(Envelope(id=die.id, queue="default", body=die.encode()))
    tags = [f"prefetched-{i}" for i in range(3)]
    for tag in tags:
        client.send_task(corpus.PING, [tag])
    marker = tmp_path / "died"
    worker = WorkerProcess(client.conf.broker_url, tmp_path, "-P", "prefork", "-c", "1",
                           "--prefetch-multiplier", "4", CONVEYOR_BROKER_LEASE_TIMEOUT="30",
                           HOSTILE_KILL_ONCE=str(marker))
    try:
        wait_for(marker.exists, 30, "the child to die")
        wait_for(lambda: {*tags, "die-1"} <= worker.tags(), 12, "the prefetched messages")
    finally:
        assert worker.stop() == 0


# -- in process: a consumer thread that dies is replaced ---------------------------
def test_a_dead_consumer_thread_is_replaced(memory_url: str, monkeypatch: Any) -> None:
    """A consumer loop that dies of an internal error (injected here: no message
    can cause one any more) is replaced by the pool's supervisor; its held
    message goes back to the broker and runs."""
    from tests.security import hostile_app

    app = Conveyor("replace", broker=memory_url, set_as_current=False)
    echo = app.task(name=corpus.ECHO)(hostile_app.echo.run)
    real = consumer_module.Consumer._run_batch
    died = threading.Event()

    def dies_once(self: consumer_module.Consumer, batch: Any) -> None:
        if not died.is_set():
            self.reporter.held(batch)
            died.set()
            raise RuntimeError("consumer bug on purpose")
        real(self, batch)

    monkeypatch.setattr(consumer_module.Consumer, "_run_batch", dies_once)
    with run_worker(app, concurrency=1, pool="threads") as worker:
        result = echo.delay(7)
        assert result.get(timeout=15) == [[7], {}]
        assert died.is_set()
        pool = worker.worker._pool
        assert pool.replaced == 1
        assert all(thread.is_alive() for thread in pool.threads.values())
    app.close()


# -- Hypothesis: envelopes with any field of any JSON value --------------------------
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.text(st.one_of(st.characters(), SURROGATES), max_size=20)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
TAGS = st.fixed_dictionaries({"__t": st.sampled_from(["datetime", "date", "time", "timedelta",
                                                      "decimal", "uuid", "bytes", "set",
                                                      "tuple", "dict", "x"]),
                              "v": VALUES})
FIELD_VALUES = st.one_of(VALUES, TAGS, st.lists(TAGS, max_size=2))


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """A valid echo call with some fields replaced, dropped, or the text cut short."""
    doc: dict[str, Any] = corpus.doc()
    for field in draw(st.lists(st.sampled_from(corpus.FIELDS), max_size=4, unique=True)):
        if draw(st.booleans()):
            doc[field] = draw(FIELD_VALUES)
        else:
            doc.pop(field, None)
    body = json.dumps(doc).encode()
    if draw(st.integers(0, 9)) == 0:
        body = body[:draw(st.integers(0, len(body)))]
    return body


def test_hypothesis_envelopes_never_stop_the_worker(memory_url: str) -> None:
    """Thousands of generated envelopes (NaN, surrogates, wrong types, tagged values
    that do not decode) through the real in-process worker: a good call after
    each batch completes, and no consumer thread was ever replaced."""
    from tests.security import hostile_app

    app = Conveyor("hypothesis", broker=memory_url, result_backend=memory_url,
                   set_as_current=False)
    echo = app.task(name=corpus.ECHO)(hostile_app.echo.run)
    sent = [0]
    with run_worker(app, concurrency=2, pool="threads") as worker:

        @settings(max_examples=30, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(envelopes(), min_size=35, max_size=45))
        def batch(bodies: list[bytes]) -> None:
            app.broker.enqueue_many([Envelope(str(uuid.uuid4()), "default", b)
                                     for b in bodies])
            sent[0] += len(bodies)
            assert echo.delay("ok").get(timeout=15) == [["ok"], {}]

        batch()
        worker.join(30)
        assert worker.worker._pool.replaced == 0
    assert sent[0] >= 1000
    app.close()


# -- values that cannot be stored ----------------------------------------------------
@pytest.fixture
def store_app(store_url: str) -> Iterator[Conveyor]:
    """An app whose broker and result store are the parametrized SQLite, Redis or PostgreSQL."""
    from tests.security import hostile_app

    app = Conveyor("values", broker=store_url, result_backend=store_url, set_as_current=False)
    for task in (hostile_app.echo, hostile_app.give_back):
        app.task(name=task.name)(task.run)
    yield app
    app.close()


def test_a_lone_surrogate_argument_is_refused_at_delay(store_app: Conveyor) -> None:
    """Refused before anything is sent, naming the argument (as a model instance is,
    guarantee 5).  Celery's JSON encoder would fail on it with a bare
    UnicodeEncodeError from deep inside kombu."""
    from conveyor.exceptions import SerializationError

    echo = store_app.tasks[corpus.ECHO]
    with pytest.raises(SerializationError, match=r"positional argument 1 holds a lone"):
        echo.delay("fine", "bad \ud800")
    with pytest.raises(SerializationError, match=r"keyword argument 'note'\['x'\] holds"):
        echo.delay(note={"x": "\udfff"})
    with pytest.raises(SerializationError, match=r"name of keyword argument"):
        echo.apply_async(kwargs={"\ud800": 1})
    assert sum(s.ready for s in store_app.broker.stats(["default"])) == 0


def test_a_result_that_cannot_be_stored_is_a_clear_failure(store_app: Conveyor) -> None:
    """A task returning a lone surrogate used to run, fail to store its result and be
    dead-lettered after its side effects (issue 15, finding 3): now its record
    is a FAILURE that names the value, and the message is acknowledged."""
    give_back = store_app.tasks[f"{corpus.APP}.give_back"]
    with run_worker(store_app, concurrency=1) as worker:
        result = give_back.delay("surrogate")
        with pytest.raises(Exception, match="the task's return value holds a lone surrogate"):
            result.get(timeout=15)
        worker.join(15)
    assert result.state == "FAILURE"
    [stats] = store_app.broker.stats(["default"])
    assert stats.dead == 0


def test_nan_and_infinity_results_round_trip(store_app: Conveyor) -> None:
    """Decision (docs/security.md): NaN and Infinity travel as Python's json (and
    kombu's, so Celery's) writes them, the non-standard tokens NaN/Infinity, and
    read back as the same floats; the monitor shows them as text."""
    give_back = store_app.tasks[f"{corpus.APP}.give_back"]
    echo = store_app.tasks[corpus.ECHO]
    with run_worker(store_app, concurrency=1):
        nan = give_back.delay("nan").get(timeout=15)
        assert give_back.delay("inf").get(timeout=15) == float("inf")
        assert echo.delay(float("-inf")).get(timeout=15) == [[float("-inf")], {}]
    assert nan != nan


def test_a_result_nested_too_deeply_is_a_clear_failure(store_app: Conveyor) -> None:
    """Used to be dead-lettered as an internal error after the task ran (RecursionError)."""
    echo = store_app.tasks[corpus.ECHO]
    deep: list[Any] = []
    for _ in range(3000):
        deep = [deep]
    from conveyor.exceptions import SerializationError

    with pytest.raises(SerializationError, match="positional argument 0 is nested too deeply"):
        echo.delay(deep)
    give_back = store_app.tasks[f"{corpus.APP}.give_back"]
    with run_worker(store_app, concurrency=1) as worker:
        result = give_back.delay("deep")
        with pytest.raises(Exception, match="return value is nested too deeply"):
            result.get(timeout=15)
        worker.join(15)
    assert store_app.broker.stats(["default"])[0].dead == 0


def test_a_batch_of_events_the_store_refuses_is_dropped_not_retried_forever(
        memory_url: str) -> None:
    """A batch the store refuses for its data (it used to be a NULL retries count
    from a hostile body) was put back and refused again at every heartbeat, so no
    task event was recorded again; now only a store that is away keeps it."""
    from conveyor._events import TaskReport
    from conveyor.exceptions import BrokerError
    from conveyor.worker.book import LeaseBook
    from conveyor.worker.main import Worker

    class Refusing:
        def __init__(self, error: Exception) -> None:
            self.error, self.written = error, 0

        def write(self, batch: Any) -> None:
            self.written += 1
            raise self.error

    app = Conveyor("flush", broker=memory_url, set_as_current=False)
    for error, kept in ((ValueError("NOT NULL constraint failed"), 0),
                        (BrokerError("event store away"), 1)):
        book = LeaseBook()
        book.recorder.add(TaskReport("t1", "x", "default", "SUCCESS", 1.0))
        worker = Worker(app, pool="threads", events=Refusing(error))  # type: ignore[arg-type]
        if kept:
            with pytest.raises(BrokerError):
                worker._flush(book)
        else:
            worker._flush(book)
        assert len(book.recorder.drain("w").tasks) == kept
    app.close()


def test_made_up_task_names_add_a_bounded_number_of_counter_series() -> None:
    """A writer flooding the broker with a new task name per message must not make
    the event store (and every monitor overview) grow a counter series for each."""
    from conveyor._events import MAX_UNSTARTED_NAMES, TaskClock
    from conveyor.brokers.base import Delivery
    from conveyor.worker.execute import DEAD, Outcome

    clock = TaskClock()
    names = set()
    for i in range(MAX_UNSTARTED_NAMES + 50):
        body = json.dumps({"id": f"m{i}", "task": f"made.up.{i}"}).encode()
        report = clock.finish(Delivery(id=f"m{i}", queue="q", body=body, deliveries=1, token="t"),
                              Outcome(DEAD, reason="unknown task"))
        assert report is not None
        names.add(report.name)
    assert len(names) == MAX_UNSTARTED_NAMES + 1 and "(other names)" in names
