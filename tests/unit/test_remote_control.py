"""Remote control on the memory channel with the real in-process worker.

Reply shapes and argument handling follow Celery's celery/app/control.py
(``broadcast``, ``Inspect._prepare``) and celery/worker/control.py; what
differs on purpose is listed in docs/migrating-from-celery.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from conveyor import Conveyor
from conveyor.control.base import Command, channel_for
from conveyor.control.cli import EX_UNAVAILABLE, control_command, inspect_ping
from conveyor.exceptions import ConfigurationError
from conveyor.testing import ThreadedWorker, make_test_app, run_worker

NODE = "unit@test"


@pytest.fixture
def app() -> Conveyor:
    app = make_test_app("control", config={"broker_transport_options": {"password": "hunter2"}})

    @app.task(name="jobs.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


@pytest.fixture
def worker(app: Conveyor) -> Iterator[ThreadedWorker]:
    with run_worker(app, hostname=NODE) as running:
        yield running


def test_replies_are_keyed_by_node_and_filtered_by_destination(
        app: Conveyor, worker: ThreadedWorker) -> None:
    assert app.control.ping(timeout=0.5) == [{NODE: {"ok": "pong"}}]
    assert app.control.ping(destination=["other@host"], timeout=0.2) == []
    assert app.control.inspect(destination=["other@host"], timeout=0.2).ping() is None
    # Celery: a single destination string gets that node's reply alone.
    assert "jobs.add" in app.control.inspect(destination=NODE).registered()
    reply = app.control.broadcast("no_such_thing", reply=True, destination=[NODE])
    assert reply == [{NODE: {"error": "No such control command: no_such_thing"}}]


def test_rate_limit_replies_as_celery_does(app: Conveyor, worker: ThreadedWorker) -> None:
    """Celery's replies; the effect on starts is proven in tests/faults/test_rate_limits.py."""
    [reply] = app.control.rate_limit("jobs.add", "10/s", reply=True, destination=[NODE])
    assert reply[NODE] == {"ok": "new rate limit set successfully"}
    assert app.tasks["jobs.add"].options.rate_limit == "10/s"
    [off] = app.control.rate_limit("jobs.add", 0, reply=True, destination=[NODE])
    assert off[NODE] == {"ok": "rate limit disabled successfully"}
    [bad] = app.control.rate_limit("jobs.add", "often", reply=True, destination=[NODE])
    assert "not understood" in bad[NODE]["error"]
    [unknown] = app.control.rate_limit("jobs.nope", "1/s", reply=True, destination=[NODE])
    assert "unknown task" in unknown[NODE]["error"]


def test_revoke_is_stored_and_listed(app: Conveyor, worker: ThreadedWorker) -> None:
    app.control.revoke("abc")
    assert app.broker.revoked(["abc"]) == {"abc": False}
    assert app.control.inspect([NODE]).revoked() == {NODE: ["abc"]}
    with pytest.raises(ConfigurationError, match="signal"):
        app.control.revoke("abc", terminate=True, signal="SIGUSR1")


def test_conf_masks_secrets(app: Conveyor, worker: ThreadedWorker) -> None:
    conf = app.control.inspect([NODE]).conf()[NODE]
    assert conf["broker_transport_options"] == {"password": "********"}
    assert "hunter2" not in str(app.control.inspect([NODE]).conf(with_defaults=True))


def test_active_queues_report_the_maximum_each_rabbitmq_queue_is_declared_with(
        tmp_path: Path) -> None:
    """A queue's own ``max_priority`` wins over ``task_queue_max_priority`` (Celery's
    ``Queues._set_max_priority``, celery/app/amqp.py; ADR 0041), classic queues only.
    Celery reports the app-wide one in ``queue_arguments`` alone; here
    ``max_priority`` is the declared maximum whichever setting gave it.  The broker
    is opened, never connected: the arguments are those it would declare."""
    from conveyor import Queue
    from conveyor.control.commands import Panel

    def reported(queue_type: str, **settings: Any) -> dict[str, Any]:
        broker = (f"amqp://guest:guest@127.0.0.1:1/v?queue_type={queue_type}"
                  f"&state_url=sqlite:///{tmp_path / 'state.db'}")
        app = Conveyor("t", broker=broker, backend=f"sqlite:///{tmp_path / 'r.db'}",
                       task_queues=[Queue("default"), Queue("ranked", max_priority=5)],
                       set_as_current=False, **settings)
        panel = Panel(SimpleNamespace(app=app, queues=["default", "ranked"]))
        try:
            return {q["name"]: (q["max_priority"], q["queue_arguments"]["x-queue-type"])
                    for q in panel.handle("active_queues", {})}
        finally:
            app.close()

    assert reported("classic", task_queue_max_priority=9) == {
        "default": (9, "classic"), "ranked": (5, "classic")}
    assert reported("classic") == {"default": (None, "classic"), "ranked": (5, "classic")}
    assert reported("quorum") == {"default": (None, "quorum"), "ranked": (None, "quorum")}


def test_active_queues_report_no_maximum_where_queues_are_not_declared(
        app: Conveyor, worker: ThreadedWorker) -> None:
    """Off RabbitMQ (here memory, as SQLite, Redis, PostgreSQL) every queue orders by
    the priority steps: no declaration, no maximum, even with one configured."""
    app.conf.task_queue_max_priority = 9
    [queue] = app.control.inspect([NODE]).active_queues()[NODE]
    assert (queue["name"], queue["max_priority"], queue["queue_arguments"]) == (
        worker.worker.queues[0], None, None)


def test_unsupported_arguments_are_refused(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="pattern"):
        app.control.broadcast("ping", pattern="w*")
    with pytest.raises(ConfigurationError, match="attributes"):
        app.control.inspect().registered("rate_limit")


def test_malformed_commands_do_not_stop_the_control_thread(
        app: Conveyor, worker: ThreadedWorker) -> None:
    channel = channel_for(app.conf.broker_url)
    listener = channel.listen()
    from conveyor.control.base import parse_commands

    assert parse_commands(["{not json", '{"no": "name"}']) == []
    channel.publish(Command("ping", {"unexpected": 1}, [NODE]))
    assert listener.receive(1.0)[0].name == "ping"
    listener.close()
    assert app.control.ping([NODE], timeout=0.5) == [{NODE: {"ok": "pong"}}]


def test_cli_ping_and_control(app: Conveyor) -> None:
    runner = CliRunner()
    obj = SimpleNamespace(app=app)
    alone = runner.invoke(inspect_ping, ["-t", "0.2"], obj=obj)
    assert alone.exit_code == EX_UNAVAILABLE  # Celery's exit status when nobody answers
    with run_worker(app, hostname=NODE):
        found = runner.invoke(inspect_ping, [], obj=obj)
        assert found.exit_code == 0 and NODE in found.output and "OK: pong" in found.output
        grown = runner.invoke(control_command, ["pool_grow", "1", "-d", NODE], obj=obj)
        assert grown.exit_code == 0 and "pool will grow" in grown.output
        bad = runner.invoke(control_command, ["pool_grow", "many"], obj=obj)
        assert bad.exit_code == 2 and "pool_grow" in bad.output
