"""Remote control against real worker processes, on SQLite, Redis, PostgreSQL and RabbitMQ
(issue 18, item 1), each through its own control channel.

Each command's effect on the running worker is checked, not only its reply:
Celery's meanings are in /work/ref/celery/celery/worker/control.py
(``ping``, ``active``, ``cancel_consumer``, ``time_limit``, ``pool_grow``,
``shutdown``) and the reply shapes in celery/app/control.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, _amqp, states

from ..conftest import delete_amqp_queue
from .processes import ROOT, Ledger, children_of, start_worker, stop, wait_for, worker_env

APP = "tests.integration.worker_app"
WORK = f"{APP}.work"
NODE = "ctl@test"


@pytest.fixture(params=["sqlite", "redis", "postgres", "amqp"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    fixture = {"postgres": "pg_url", "amqp": "amqp_url", "redis": "prefixed"}[request.param]
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def backend(url: str, tmp_path: Path) -> str:
    """Results beside the broker; RabbitMQ keeps none, so SQLite in the test's folder."""
    return f"sqlite:///{tmp_path / 'results.db'}" if url.startswith("amqp") else url


@pytest.fixture
def client(url: str, backend: str) -> Iterator[Conveyor]:
    app = Conveyor("client", broker=url, backend=backend, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def spawn(url: str, backend: str, ledger: Ledger, tmp_path: Path,
          client: Conveyor) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a worker named NODE and return once it answers ping."""
    procs: list[subprocess.Popen[bytes]] = []

    def _spawn(*args: str) -> subprocess.Popen[bytes]:
        env = worker_env(url, ledger.path, result_backend=backend,
                         worker_heartbeat_interval=0.5)
        proc = start_worker(env, "-n", NODE, *args, log=tmp_path / "worker.log")
        procs.append(proc)
        wait_for(lambda: proc.poll() is not None or client.control.ping([NODE], timeout=0.3), 30,
                 "the worker to answer ping")
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()
        return proc

    yield _spawn
    for proc in procs:
        stop(proc, signal.SIGKILL, timeout=10)


def started(ledger: Ledger, task_id: str) -> bool:
    return task_id in ledger.count("start")


def test_inspect_answers_while_every_slot_is_busy_and_shutdown_exits_0(
        client: Conveyor, spawn: Callable[..., subprocess.Popen[bytes]], ledger: Ledger) -> None:
    busy = client.send_task(WORK, args=[3.0])
    waiting = client.send_task(WORK, args=[0.0])  # both queued first: one batch reserves both
    proc = spawn("-P", "threads", "-c", "1", "-Q", "default,extra")
    wait_for(lambda: started(ledger, busy.id), 20, "the long task to start")

    # Celery's shapes: a list of {node: reply} for ping, {node: ...} for inspect.
    began = time.monotonic()
    assert client.control.ping(destination=[NODE], timeout=2.0) == [{NODE: {"ok": "pong"}}]
    assert time.monotonic() - began < 1.0  # the one slot is busy; the control thread is not
    inspect = client.control.inspect(destination=[NODE], timeout=2.0)
    [active] = inspect.active()[NODE]
    assert (active["id"], active["name"], active["args"]) == (busy.id, WORK, [3.0])
    assert [r["id"] for r in inspect.reserved()[NODE]] == [waiting.id]  # prefetched, not started
    assert inspect.scheduled() == {NODE: []}
    # query_task (Celery: {id: [state, request]}): one runs, one waits, one is unknown
    found = inspect.query_task(busy.id, [waiting.id, "no-such-id"])[NODE]
    assert {i: held[0] for i, held in found.items()} == {busy.id: "active",
                                                          waiting.id: "reserved"}
    assert found[busy.id][1]["name"] == WORK
    assert client.control.broadcast("enable_events", destination=[NODE], reply=True,
                                    timeout=2.0) == [{NODE: {"ok": "task events already enabled"}}]
    [[refused]] = [r.values() for r in client.control.broadcast(
        "disable_events", destination=[NODE], reply=True, timeout=2.0)]
    assert "cannot be disabled" in refused["error"]
    assert WORK in inspect.registered()[NODE]
    assert [q["name"] for q in inspect.active_queues()[NODE]] == ["default", "extra"]
    stats = inspect.stats()[NODE]
    assert stats["pid"] == proc.pid and stats["pool"]["max-concurrency"] == 1
    shown = str(inspect.conf()[NODE]).replace(NODE, "").replace("********@", "")
    assert "@" not in shown  # no credentials shown: any user part is masked
    assert client.control.inspect(destination=["nobody@nowhere"], timeout=0.3).ping() is None

    client.control.shutdown(destination=[NODE])
    assert proc.wait(30) == 0  # warm: the running task finished first
    assert busy.get(timeout=5) > 0


def test_cancel_consumer_leaves_the_queue_alone_until_add_consumer(
        client: Conveyor, spawn: Callable[..., subprocess.Popen[bytes]], ledger: Ledger) -> None:
    spawn("-P", "threads", "-c", "2", "-Q", "default,extra")
    assert client.control.cancel_consumer("extra", reply=True, destination=[NODE]) == [
        {NODE: {"ok": "no longer consuming from extra"}}]
    parked = client.send_task(WORK, queue="extra")
    sentinel = client.send_task(WORK)  # sent after: once it ran, the worker polled both
    assert sentinel.get(timeout=20) > 0
    assert not started(ledger, parked.id)
    # A reservation already under way when the queue was cancelled may hold the
    # message for a moment; it is handed back unrun at once.
    wait_for(lambda: client.broker.stats(["extra"])[0].ready == 1, 10,
             "the parked message to wait in its queue")
    assert not started(ledger, parked.id)
    queues = client.control.inspect([NODE]).active_queues()
    assert [q["name"] for q in queues[NODE]] == ["default"]

    assert client.control.add_consumer("extra", reply=True, destination=[NODE]) == [
        {NODE: {"ok": "add consumer extra"}}]
    assert parked.get(timeout=20) > 0


RANKED = "ranked"  # declared with a maximum priority of its own (worker_app): this test's
# kombu's Queue.attrs and Exchange.attrs (kombu/entity.py): the keys of Celery's reply.
QUEUE_KEYS = {"name", "exchange", "routing_key", "queue_arguments", "binding_arguments",
              "consumer_arguments", "durable", "exclusive", "auto_delete", "no_ack", "alias",
              "bindings", "no_declare", "expires", "message_ttl", "max_length",
              "max_length_bytes", "max_priority"}
EXCHANGE_KEYS = {"name", "type", "arguments", "durable", "passive", "auto_delete",
                 "delivery_mode", "no_declare"}


def test_active_queues_report_each_queue_as_its_broker_declares_it(
        url: str, client: Conveyor, spawn: Callable[..., subprocess.Popen[bytes]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery's reply is kombu's ``Queue.as_dict(recurse=True)`` for each queue the
    worker consumes (celery/worker/control.py ``active_queues``): its ``max_priority``
    and ``queue_arguments`` are the queue's own (kombu/entity.py ``Queue.attrs``), and
    ``task_queue_max_priority`` is written into ``queue_arguments`` as
    ``x-max-priority`` (celery/app/amqp.py ``Queues._set_max_priority``).  Here both
    are what the broker declares.  On RabbitMQ (classic queues) they are the
    arguments RabbitMQ holds the queue with: declaring it again with them is
    accepted, without the ``x-max-priority`` refused.  Elsewhere both are None:
    nothing is declared there, every queue orders by the app's priority steps.
    Every broker reaches a queue through the default exchange, by its name."""
    amqp = url.startswith("amqp")
    if amqp:
        delete_amqp_queue(url, RANKED)  # an earlier run's
    monkeypatch.setenv("RANKED_MAX_PRIORITY", "5")
    proc = spawn("-P", "threads", "-c", "1", "-Q", f"default,{RANKED}")
    queues = {q["name"]: q for q in client.control.inspect([NODE]).active_queues()[NODE]}
    assert list(queues) == ["default", RANKED]
    assert [(set(q), set(q["exchange"]), q["exchange"]["name"], q["routing_key"])
            for q in queues.values()] == [(QUEUE_KEYS, EXCHANGE_KEYS, "", name)
                                          for name in queues]
    declared = {name: (q["max_priority"], q["queue_arguments"]) for name, q in queues.items()}
    if not amqp:
        assert declared == {"default": (None, None), RANKED: (None, None)}
        return
    assert (declared["default"][0], declared[RANKED][0]) == (None, 5)
    assert _cli_rows(url, "active_queues")[RANKED][:3] == [NODE, RANKED, "5"]
    ranked = declared[RANKED][1]
    assert ranked["x-max-priority"] == 5 and "x-max-priority" not in declared["default"][1]
    try:
        wait_for(lambda: _accepted(url, lambda ch: ch.queue_declare(
            _amqp.dead_name(RANKED), passive=True)), 30, "the worker to declare its queues")
        for name, (_, arguments) in declared.items():
            assert _accepted(url, lambda ch, n=name, a=arguments: ch.queue_declare(
                n, durable=True, arguments=a))
        unranked = {k: v for k, v in ranked.items() if k != "x-max-priority"}
        assert not _accepted(url, lambda ch: ch.queue_declare(
            RANKED, durable=True, arguments=unranked))
    finally:
        client.control.shutdown(destination=[NODE])
        proc.wait(30)
        delete_amqp_queue(url, RANKED)


def _cli_rows(url: str, *command: str) -> dict[str, list[str]]:
    """``conveyor inspect <command>``'s table, its rows by their second column."""
    env = {**os.environ, "CONVEYOR_BROKER_URL": url, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "conveyor", "-A", APP, "inspect", *command,
                          "-t", "2"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    # The headers, the rows, a blank line, then "N nodes online." (as Celery's).
    table = out.stdout.split("\n\n", 1)[0].splitlines()[1:]
    rows = [line.split() for line in table]
    assert rows and all(len(row) >= 2 for row in rows), out.stdout
    return {row[1]: row for row in rows}


def _accepted(url: str, op: Callable[[Any], object]) -> bool:
    """Whether RabbitMQ carries out ``op`` on a channel of its own (a refusal, such as
    a declaration with other arguments than the queue's, closes only that channel)."""
    import pika

    from conveyor._amqp_link import connection_parameters

    conn = pika.BlockingConnection(connection_parameters(_amqp.parse_amqp_url(url)))
    try:
        op(conn.channel())
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        conn.close()


def test_pool_grow_and_shrink_change_how_many_run_at_once(
        client: Conveyor, spawn: Callable[..., subprocess.Popen[bytes]], ledger: Ledger) -> None:
    spawn("-P", "threads", "-c", "1", "--prefetch-multiplier", "1")
    grown = client.control.pool_grow(2, reply=True, destination=[NODE])
    assert grown == [{NODE: {"ok": "pool will grow"}}]
    assert client.control.inspect([NODE]).stats()[NODE]["pool"]["max-concurrency"] == 3
    three = [client.send_task(WORK, args=[2.5]) for _ in range(3)]
    wait_for(lambda: all(started(ledger, r.id) for r in three), 20, "three tasks at once")
    assert not ledger.events("end")  # all three started before any ended
    for result in three:
        result.get(timeout=20)

    shrunk = client.control.pool_shrink(2, reply=True, destination=[NODE])
    assert shrunk == [{NODE: {"ok": "pool will shrink"}}]
    first, second = (client.send_task(WORK, args=[1.0]) for _ in range(2))
    first.get(timeout=20), second.get(timeout=20)
    lines = [(e[0], e[1]) for e in ledger.events() if e[1] in (first.id, second.id)]
    assert [kind for kind, _ in lines] == ["start", "end", "start", "end"]  # one at a time


def test_prefork_children_take_new_time_limits_and_the_pool_resizes(
        client: Conveyor, spawn: Callable[..., subprocess.Popen[bytes]], ledger: Ledger) -> None:
    """Children are forked with the limits: the pool replaces them (after their task)."""
    proc = spawn("-P", "prefork", "-c", "1")
    assert client.control.time_limit(WORK, hard=1.0, reply=True, destination=[NODE]) == [
        {NODE: {"ok": "time limits set successfully"}}]
    result = client.send_task(WORK, args=[30.0])
    began = time.monotonic()
    with pytest.raises(Exception, match="time limit"):
        result.get(timeout=20)
    assert result.state == states.FAILURE
    assert time.monotonic() - began < 10

    client.control.pool_grow(2, destination=[NODE], reply=True)
    wait_for(lambda: len(children_of(proc.pid)) == 3, 20, "three children")
    client.control.pool_shrink(1, destination=[NODE], reply=True)
    wait_for(lambda: len(children_of(proc.pid)) == 2, 20, "two children")


@pytest.mark.parametrize("url", ["sqlite"], indirect=True)  # the CLI is transport-blind
def test_cli_inspect_ping_exit_status(url: str, tmp_path: Path,
                                      spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """Container health checks loop on ``inspect ping``: 0 with a worker, 69 without."""
    env = {**os.environ, "CONVEYOR_BROKER_URL": url, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "conveyor", "-A", APP, "inspect", "ping", "-t", "0.5"]
    alone = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 69, alone.stdout + alone.stderr  # Celery: EX_UNAVAILABLE
    spawn("-P", "threads", "-c", "1")
    found = subprocess.run([*cmd, "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert found.returncode == 0, found.stderr
    assert '"ok": "pong"' in found.stdout and NODE in found.stdout


@pytest.mark.parametrize("url", ["sqlite"], indirect=True)
def test_cli_inspect_query_task_names_the_worker_and_state(
        url: str, tmp_path: Path, client: Conveyor, ledger: Ledger,
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """``conveyor inspect query_task ID``: a table naming the worker, the id and its state."""
    spawn("-P", "threads", "-c", "1")
    busy = client.send_task(WORK, args=[60.0])  # still running however slow the CLI starts
    wait_for(lambda: started(ledger, busy.id), 20, "the long task to start")
    row = _cli_rows(url, "query_task", busy.id)[busy.id]
    assert row[:3] == [NODE, busy.id, "active"] and row[3] == WORK
