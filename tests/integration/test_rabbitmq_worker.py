"""A real prefork worker on RabbitMQ, SIGKILLed mid-task (guarantee 1).

On RabbitMQ a lease is the worker's channel holding the unacked delivery, so
a worker that dies hands its messages back when its connection drops, at
once rather than after the lease (docs/decisions/0016-rabbitmq-broker.md).
RabbitMQ's reliability guide describes that redelivery:
https://www.rabbitmq.com/docs/reliability#consumer-side
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError, TimeLimitExceeded

from ..conftest import delete_amqp_queue
from .processes import Ledger, start_worker, stop, wait_for, worker_env

WORK = "tests.integration.worker_app.work"
LEASE = 60.0  # far longer than the test: redelivery must come from the dropped connection
QUEUE = "killed"  # this test's alone: no consumer another test left open can take it


@pytest.fixture
def urls(amqp_url: str, sqlite_url: str) -> tuple[str, str]:
    return amqp_url, sqlite_url


@pytest.fixture
def client(urls: tuple[str, str]) -> Iterator[Conveyor]:
    app = Conveyor("client", broker=urls[0], backend=urls[1], set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def spawn(urls: tuple[str, str], tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen[bytes]] = []
    ledger = Ledger(tmp_path / "ledger.txt")

    def _spawn(*args: str) -> tuple[subprocess.Popen[bytes], Ledger]:
        env = worker_env(urls[0], ledger.path, result_backend=urls[1], task_default_queue=QUEUE,
                         broker_lease_timeout=LEASE, worker_heartbeat_interval=0.5)
        proc = start_worker(env, "-P", "prefork", *args, log=tmp_path / "worker.log")
        procs.append(proc)
        return proc, ledger

    yield _spawn
    for proc in procs:
        stop(proc, signal.SIGKILL, timeout=10)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigkilled_worker_has_its_message_redelivered_at_once(client: Conveyor, spawn) -> None:
    result = client.send_task(WORK, [3.0], queue=QUEUE)
    first, ledger = spawn("-c", "1")
    wait_for(lambda: ledger.events("start"), 30, "the task to start")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    killed_at = time.monotonic()
    second, _ = spawn("-c", "1")
    wait_for(lambda: len(ledger.events("start")) >= 2, 30, "the task to start again")
    assert time.monotonic() - killed_at < LEASE / 2, "redelivered by the dropped connection"
    assert result.get(timeout=30) > 0
    assert [e[1] for e in ledger.events("end")] == [result.id]
    assert second.poll() is None


def test_connections_closed_by_the_server_are_survived(amqp_quorum_url: str) -> None:
    """``rabbitmqctl close_all_connections`` on our vhost: the leased message comes
    back (counted), the old lease is fenced, and producer and consumer reconnect."""
    from urllib.parse import unquote, urlsplit

    from conveyor.brokers import Envelope, broker_from_url

    broker = broker_from_url(amqp_quorum_url)
    try:
        broker.enqueue(Envelope(id="m", queue="q", body=b"x"))
        [held] = broker.reserve(["q"], 1, lease=60, timeout=5)
        vhost = unquote(urlsplit(amqp_quorum_url).path[1:])
        subprocess.run(["rabbitmqctl", "close_all_connections", "--vhost", vhost, "test"],
                       check=True, capture_output=True)
        assert broker.ack([held]) == [False], "the lease went with the connection"
        broker.enqueue(Envelope(id="n", queue="q", body=b"y"))
        got = broker.reserve(["q"], 2, lease=60, timeout=5)
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += broker.reserve(["q"], 2 - len(got), lease=60, timeout=1)
        assert sorted((d.id, d.deliveries) for d in got) == [("m", 2), ("n", 1)]
        assert broker.ack(got) == [True, True]
    finally:
        broker.close()


def test_a_priority_on_a_quorum_queue_is_warned_about(amqp_quorum_url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """RabbitMQ 3.10 quorum queues serve first in, first out; saying so beats silence."""
    from conveyor.brokers import Envelope, broker_from_url

    broker = broker_from_url(amqp_quorum_url)
    try:
        with caplog.at_level("WARNING", logger="conveyor.brokers.amqp"):
            broker.enqueue(Envelope(id="p", queue="q", body=b"x", priority=3))
            broker.enqueue(Envelope(id="r", queue="q", body=b"x", priority=3))
        warned = [r for r in caplog.records if "no priorities" in r.getMessage()]
        assert len(warned) == 1 and "queue_type='classic'" in warned[0].getMessage()
    finally:
        broker.close()


def test_a_classic_queue_has_priorities_only_when_a_maximum_is_set(
        amqp_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """As Celery: ``x-max-priority`` only with ``task_queue_max_priority`` (a priority
    queue costs RabbitMQ CPU on every message, ADR 0041).  Without it a priority is
    served first in, first out and named in one warning; declaring the queue again
    with another maximum is refused with a message naming queue and argument."""
    from conveyor.brokers import Envelope, broker_from_url

    plain = broker_from_url(amqp_url)
    try:
        with caplog.at_level("WARNING", logger="conveyor.brokers.amqp"):
            for i, priority in enumerate((9, 0, 9)):
                plain.enqueue(Envelope(id=str(i), queue="plain", body=b"x", priority=priority))
        warned = [r.getMessage() for r in caplog.records if "no priorities" in r.getMessage()]
        assert len(warned) == 1 and "task_queue_max_priority" in warned[0]
        got = plain.reserve(["plain"], 3, lease=60, timeout=5)
        assert [d.id for d in got] == ["0", "1", "2"]
        assert plain.ack(got) == [True, True, True]
    finally:
        plain.close()
    ordered = Conveyor("t", broker_url=amqp_url, task_queue_max_priority=9)
    try:
        assert "task_queue_max_priority" not in ordered.conf.no_effect_set()
        with pytest.raises(ConfigurationError, match=r"x-max-priority.*'plain'.*"
                                                     r"task_queue_max_priority"):
            ordered.broker.enqueue(Envelope(id="3", queue="plain", body=b"x"))
    finally:
        ordered.close()


def test_a_queue_declared_otherwise_never_costs_the_consumer_its_deliveries(
        amqp_url: str) -> None:
    """A queue another app declared with ``x-max-priority`` (ADR 0041) is counted by
    ``stats`` as it is, and a send to it is refused with a ``ConfigurationError``; in
    both cases this process keeps the connection holding its deliveries, so its
    ack still lands.  (A full test run once saw errbacks and chord bodies run two to
    four times: a worker's queue sampling declared such a queue on its consuming
    channel, RabbitMQ closed it, and handed the finished tasks out again.)"""
    from conveyor.brokers import Envelope, broker_from_url

    delete_amqp_queue(amqp_url, "foreign")  # an earlier run's, or one re-created plain
    ordered = Conveyor("t", broker_url=amqp_url, task_queue_max_priority=9)
    try:
        ordered.broker.enqueue(Envelope(id="f", queue="foreign", body=b"x"))
    finally:
        ordered.close()
    plain = broker_from_url(amqp_url)
    try:
        plain.enqueue(Envelope(id="h", queue="held", body=b"x"))
        (held,) = plain.reserve(["held"], 1, lease=60, timeout=5)
        counted = {s.queue: s.ready for s in plain.stats()}
        assert counted["foreign"] == 1 and counted["held"] == 0
        with pytest.raises(ConfigurationError, match=r"x-max-priority.*'foreign'"):
            plain.enqueue(Envelope(id="g", queue="foreign", body=b"x"))
        assert plain.ack([held]) == [True]
    finally:
        plain.close()
        delete_amqp_queue(amqp_url, "foreign")


OWN = "own-max"  # declared with a maximum of its own: only these tests use the name


def _celery_priority_queue(maximum: int) -> object:
    """Celery's routing guide's form: a kombu ``Queue`` with an exchange, a routing key
    and ``queue_arguments={'x-max-priority': N}`` (fresh: Celery's ``Queues._add``
    writes ``task_queue_max_priority`` into the objects it is given)."""
    kombu = pytest.importorskip("kombu")
    return kombu.Queue(OWN, kombu.Exchange(OWN), routing_key=OWN,
                       queue_arguments={"x-max-priority": maximum})


def test_a_queue_s_own_max_priority_is_declared_and_a_worker_serves_it_in_order(
        amqp_url: str, sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Celery's two ways to ask for RabbitMQ priorities (routing guide, "RabbitMQ
    Message Priorities") both hold: here the per-queue one.  As Celery's
    ``Queues._set_max_priority`` (celery/app/amqp.py), ``task_queue_max_priority``
    is left out for a queue with its own ``x-max-priority``, and kombu declares the
    queue with it (``Queue.queue_declare``).  Four tasks queued before the worker
    starts run in priority order (Conveyor's scale, 0 first, ADR 0008; AMQP 9 - p,
    highest first, on the wire); the worker's one startup warning names only the
    fields that do nothing on RabbitMQ (exchange, routing key); and an app that
    would declare the queue otherwise is refused by name (ADR 0041 item 4)."""
    import pika

    from conveyor import _amqp
    from conveyor._amqp_link import connection_parameters
    from conveyor.testing import run_worker

    delete_amqp_queue(amqp_url, OWN)
    app = Conveyor("t", broker=amqp_url, backend=sqlite_url, set_as_current=False,
                   task_queues=[_celery_priority_queue(10)], task_default_queue=OWN,
                   worker_prefetch_multiplier=1)
    ran: list[int] = []

    @app.task(name="t.record")
    def record(priority: int) -> None:
        ran.append(priority)

    try:
        for priority in (9, 0, 6, 3):
            record.apply_async((priority,), priority=priority)
        opts = _amqp.parse_amqp_url(app.conf.broker_url, app.conf.broker_options())
        args = _amqp.work_queue_arguments(opts, OWN)
        assert args["x-max-priority"] == 10
        conn = pika.BlockingConnection(connection_parameters(opts))
        try:  # RabbitMQ accepts the declaration again only with the same arguments
            conn.channel().queue_declare(OWN, durable=True, arguments=args)
        finally:
            conn.close()
        with caplog.at_level("WARNING", logger="conveyor.config"), \
                run_worker(app, queues=[OWN], concurrency=1):
            wait_for(lambda: len(ran) == 4, 30, "the four tasks")
        assert ran == [0, 3, 6, 9]
        (warned,) = [r.getMessage() for r in caplog.records if r.name == "conveyor.config"]
        assert "task_queues (no effect here for exchange, routing_key: " in warned
        assert "x-max-priority" not in warned
    finally:
        app.close()
    _refused_by_name(Conveyor("t", broker_url=amqp_url, task_queue_max_priority=9), amqp_url)


def test_a_queue_declared_without_a_maximum_refuses_one_of_its_own(amqp_url: str) -> None:
    """The reverse of the case above: a queue created first in, first out is not
    quietly used by an app whose ``task_queues`` gives it a maximum (kombu's
    ``Queue(..., max_priority=N)``); the error names queue, argument and setting."""
    from conveyor.brokers import Envelope, broker_from_url

    kombu = pytest.importorskip("kombu")
    delete_amqp_queue(amqp_url, OWN)
    plain = broker_from_url(amqp_url)
    try:
        plain.enqueue(Envelope(id="p", queue=OWN, body=b"x"))
    finally:
        plain.close()
    own = Conveyor("t", broker_url=amqp_url, task_queues=[kombu.Queue(OWN, max_priority=5)])
    _refused_by_name(own, amqp_url)


def _refused_by_name(app: Conveyor, url: str) -> None:
    """``app``'s send to OWN, which exists with another ``x-max-priority``, is refused
    with an error naming argument, queue and setting; then OWN is deleted."""
    from conveyor.brokers import Envelope

    try:
        with pytest.raises(ConfigurationError, match=r"inequivalent arg 'x-max-priority'.*"
                                                     r"'own-max'.*max_priority in task_queues"):
            app.broker.enqueue(Envelope(id="x", queue=OWN, body=b"x"))
    finally:
        app.close()
        delete_amqp_queue(url, OWN)


def test_a_queue_s_own_max_priority_on_quorum_queues_is_named_not_declared(
        amqp_quorum_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Quorum queues (Conveyor's default) have no priorities in RabbitMQ 3.10.  As
    for ``task_queue_max_priority`` there (ADR 0041 item 2), a queue's own maximum
    is not declared: the startup warning names it with what to set, and a priority
    sent to the queue is named once more when it is sent."""
    from conveyor.brokers import Envelope

    app = Conveyor("t", broker_url=amqp_quorum_url,
                   task_queues=[_celery_priority_queue(10)])
    try:
        said = app.conf.no_effect_set()["task_queues"]
        assert "queue_arguments['x-max-priority']" in said
        assert "quorum queues have no priorities" in said and "queue_type='classic'" in said
        with caplog.at_level("WARNING", logger="conveyor.brokers.amqp"):
            app.broker.enqueue(Envelope(id="q", queue=OWN, body=b"x", priority=3))
        (warned,) = [r.getMessage() for r in caplog.records if "no priorities" in r.getMessage()]
        assert "max_priority" in warned
    finally:
        app.close()
        delete_amqp_queue(amqp_quorum_url, OWN)


def test_prefork_children_acknowledge_their_own_messages(client: Conveyor, spawn) -> None:
    """A RabbitMQ delivery can only be acknowledged on the channel that received it,
    so prefork children ack (and renew) their own: after a restart nothing finished
    runs again.  A marker sent after the restart runs behind anything RabbitMQ would
    have handed back (requeued messages go first), so once it ends, all did."""
    ids = [client.send_task(WORK, [0.05], queue=QUEUE).id for _ in range(20)]
    first, ledger = spawn("-c", "2")
    wait_for(lambda: len(ledger.events("end")) >= 20, 60, "the first 20 tasks")
    stop(first, signal.SIGTERM, timeout=30)
    assert first.returncode == 0
    marker = client.send_task(WORK, [0.0], queue=QUEUE)
    second, _ = spawn("-c", "2")
    wait_for(lambda: marker.id in {e[1] for e in ledger.events("end")}, 60, "the marker")
    ends = [e[1] for e in ledger.events("end")]
    assert sorted(ends) == sorted([*ids, marker.id]), "a finished task ran again"
    assert second.poll() is None
    # The supervisor left them to the children: no side-store settlement was written
    # (one Redis or SQLite write per task, kept a day, before).
    settled = [i for i in ids if client.broker.lease_holder(f"conveyor.settled:{i}")]
    assert settled == []


def test_a_task_killed_at_its_hard_limit_does_not_come_back(client: Conveyor, spawn) -> None:
    """The supervisor kills the child; the child's channel closes and RabbitMQ hands
    the message out again, so the supervisor's settlement is recorded in the side
    store and the redelivery is dropped.  Before: the task ran again and again."""
    limited = client.send_task("tests.integration.worker_app.hard_limited", queue=QUEUE)
    worker, ledger = spawn("-c", "1")
    with pytest.raises(TimeLimitExceeded):
        limited.get(timeout=30)
    marker = client.send_task(WORK, [0.0], queue=QUEUE)
    wait_for(lambda: marker.id in {e[1] for e in ledger.events("end")}, 60, "the marker")
    assert ledger.count("start")[limited.id] == 1
    assert worker.poll() is None
