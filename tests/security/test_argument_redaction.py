"""Secret arguments stay out of sight: ``redact=[...]`` per task, ``argsrepr``/``kwargsrepr``
per call; the task itself still receives the real values.

Celery's behaviour matched here: ``apply_async(argsrepr=..., kwargsrepr=...)``
puts the two strings in the message headers (celery/app/task.py passes them
on, celery/app/amqp.py ``as_task_v2`` writes ``argsrepr``/``kwargsrepr``
headers), and what shows arguments to people (the worker's log lines,
Flower, django-celery-results' ``task_args``/``task_kwargs``) reads those
headers instead of the arguments.  ``redact=`` is Conveyor's own option.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from conveyor import Conveyor, Task
from conveyor import _redact as redact
from conveyor._cli import main
from conveyor.exceptions import ConfigurationError, Reject
from conveyor.testing import run_worker
from tests.integration.test_monitor_api import ACT, Served, eventually

PLANTED = "hunter2-planted-secret"


def test_the_rule() -> None:
    """Declared names are masked in kwargs and in dicts at any depth; repr headers win;
    with nothing declared the same objects come back."""
    args = ("alice", {"user": "a", "password": PLANTED, "deep": [{"token": PLANTED}]})
    kwargs = {"password": PLANTED, "retries": 3}
    shown_args, shown_kwargs = redact.arguments(args, kwargs, {}, ("password", "token"))
    assert shown_args == ("alice", {"user": "a", "password": redact.MASK,
                                    "deep": [{"token": redact.MASK}]})
    assert shown_kwargs == {"password": redact.MASK, "retries": 3}
    assert args[1]["password"] == PLANTED  # the caller's values are not touched
    headers = {"argsrepr": "('alice', '…')", "redact": ["password"]}
    assert redact.arguments(args, kwargs, headers) == ("('alice', '…')",
                                                       {"password": redact.MASK, "retries": 3})
    assert redact.arguments(args, kwargs, {}, ()) == (args, kwargs)
    assert redact.arguments(args, kwargs, {}, ())[0] is args
    assert not redact.arguments_hidden({}, ()) and redact.arguments_hidden({"kwargsrepr": "x"})


def test_redact_is_a_task_option_everywhere_options_are_taken(tmp_path: Path) -> None:
    app = Conveyor("opts", broker="memory://opts-redact", set_as_current=False)

    class Secretive(Task):
        redact = ("token",)

    @app.task(redact=["password", "token"])
    def login(user: str, password: str) -> None: ...

    @app.task(base=Secretive)
    def call_api(token: str) -> None: ...

    @app.task(redact="password")  # one name given as a string is one name, not letters
    def one(password: str) -> None: ...

    assert login.redact == ("password", "token") and login.options.redact == ("password", "token")
    assert call_api.redact == ("token",)
    assert one.redact == ("password",)
    with pytest.raises(ConfigurationError, match="redact takes argument names"):
        app.task(redact=[3])(lambda: None)
    # The sender writes the names into the message, for readers without the task's code.
    message = app.build_message(login.name, ("a",), {"password": PLANTED}, _task=login)
    assert message.headers["redact"] == ["password", "token"]
    call = app.build_message(one.name, (), {}, _task=one, argsrepr="()", kwargsrepr="{...}")
    assert (call.headers["argsrepr"], call.headers["kwargsrepr"]) == ("()", "{...}")
    app.close()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Conveyor]:
    instance = Conveyor("secrets", broker=f"sqlite:///{tmp_path / 'broker.db'}",
                        result_backend=f"sqlite:///{tmp_path / 'results.db'}",
                        worker_heartbeat_interval=0.2, set_as_current=False)
    yield instance
    instance.close()


def _stored_bytes(tmp_path: Path) -> bytes:
    """Every byte of the result and event store (the SQLite file and its journal)."""
    return b"".join(p.read_bytes() for p in tmp_path.glob("results.db*"))


def test_a_real_worker_gets_the_password_and_nothing_people_read_has_it(
        app: Conveyor, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    received: list[str] = []

    @app.task(name="acct.login", redact=["password", "token"])
    def login(user: str, password: str, profile: dict[str, Any]) -> str:
        received.extend([password, profile["token"]])
        return f"welcome {user}"

    @app.task(name="acct.plain")
    def plain(user: str, secret: str) -> str:
        received.append(secret)
        return "ok"

    caplog.set_level(logging.DEBUG)
    with Served(app) as api, run_worker(app, concurrency=1) as worker:
        first = login.apply_async(("alice",), {"password": PLANTED,
                                               "profile": {"token": PLANTED, "plan": "pro"}})
        second = plain.apply_async(("bob", PLANTED), argsrepr="('bob', <secret>)")
        assert first.get(timeout=20) == "welcome alice" and second.get(timeout=20) == "ok"
        worker.join()
        assert received == [PLANTED, PLANTED, PLANTED]
        shown = eventually(lambda: api.get(f"/api/tasks/{first.id}").json().get("name")
                           and api.get(f"/api/tasks/{first.id}").json())
        assert shown["kwargs"] == {"password": redact.MASK,
                                   "profile": {"token": redact.MASK, "plan": "pro"}}
        assert shown["args"] == ["alice"]
        other = api.get(f"/api/tasks/{second.id}").json()
        assert other["args"] == "('bob', <secret>)" and other["kwargs"] == {}
        answers = [api.get(path).text for path in (
            f"/api/tasks/{first.id}", f"/api/tasks/{first.id}/record",
            f"/api/tasks/{second.id}", f"/api/tasks/{second.id}/record",
            "/api/tasks", "/api/tasks/running", "/api/workers", "/api/overview",
            f"/tasks/{first.id}")]
        assert all(PLANTED not in text for text in answers)
        # The monitor cannot send masked values again as if they were the arguments.
        refused = api.post(f"/api/tasks/{first.id}/retry", headers=ACT)
        assert refused.status_code == 409 and "redacted" in refused.json()["error"]
    assert PLANTED.encode() not in _stored_bytes(tmp_path)
    assert _stored_bytes(tmp_path)  # the stores did write there
    with sqlite3.connect(tmp_path / "results.db") as db:  # the event store is there too
        tables = {row[0] for row in db.execute("select name from sqlite_master")}
    assert any("event" in t or "timeline" in t for t in tables), tables
    assert not [r for r in caplog.records if PLANTED in r.getMessage()]
    assert any(first.id in r.getMessage() for r in caplog.records)  # lines were written


def test_dead_letters_are_shown_redacted_and_replayed_whole(app: Conveyor,
                                                            tmp_path: Path) -> None:
    received: list[str] = []

    @app.task(name="acct.once", redact=["password"])
    def once(password: str) -> None:
        if not received:
            received.append("refused")
            raise Reject("not now", requeue=False)
        received.append(password)

    with Served(app) as api:
        with run_worker(app, concurrency=1) as worker:
            once.delay(password=PLANTED)
            worker.join()
        (letter,) = eventually(lambda: api.get("/api/dead-letters").json()["dead_letters"])
        assert letter["kwargs"] == {"password": redact.MASK}
        assert PLANTED not in letter["body"] and redact.MASK in letter["body"]
        body = api.get("/api/dead-letters/body",
                       params={"queue": letter["queue"], "id": letter["id"]})
        assert body.status_code == 200 and PLANTED.encode() not in body.content
        assert b'"acct.once"' in body.content
        listed = _cli(app, "dead-letters", "list", "--json")
        assert letter["id"] in listed and PLANTED not in listed and redact.MASK in listed
        replayed = api.post("/api/dead-letters/replay", headers=ACT,
                            json={"queue": letter["queue"], "ids": [letter["id"]]})
        assert replayed.json() == {"replayed": 1}
    with run_worker(app, concurrency=1) as worker:
        worker.join()
    assert received == ["refused", PLANTED]  # the broker kept the real arguments


def _cli(app: Conveyor, *args: str) -> str:
    """``conveyor -A <a module holding app> ...`` in this process; its output."""
    module = types.ModuleType("redaction_test_app")
    module.app = app  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        result = CliRunner().invoke(main, ["-A", module.__name__, *args])
    finally:
        del sys.modules[module.__name__]
    assert result.exit_code == 0, result.output
    return result.output


def test_inspect_active_shows_redacted_arguments(app: Conveyor) -> None:
    """``conveyor inspect active`` (and ``app.control.inspect().active()``) are read by
    people too; Celery answers them with the request's arguments."""
    import threading

    release = threading.Event()

    @app.task(name="acct.slow", redact=["password"])
    def slow(password: str) -> None:
        release.wait(20)

    with run_worker(app, concurrency=1) as worker:
        slow.delay(password=PLANTED)
        try:
            active = eventually(lambda: [t for ts in (app.control.inspect(timeout=1).active()
                                                      or {}).values() for t in ts])
        finally:
            release.set()
        worker.join()
    assert active[0]["kwargs"] == {"password": redact.MASK}
    assert PLANTED not in httpx.Response(200, json=active).text
