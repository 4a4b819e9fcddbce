"""The monitor's HTTP surface, served by uvicorn on a loopback port and read with httpx.

A real worker (threads pool, in-process) runs real tasks on the memory or
SQLite broker; the assertions compare what the API shows with what the
test did.
"""

from __future__ import annotations

import hmac
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from conveyor import Conveyor, states
from conveyor.exceptions import Reject
from conveyor.monitor.app import create_app
from conveyor.monitor.auth import Authenticator, LoginThrottle, parse_users
from conveyor.monitor.cli import inspect_command, status_command
from conveyor.monitor.openapi import openapi_schema
from conveyor.testing import run_worker

ADMIN = ("admin", "s3cret")
VIEWER = ("viewer", "look")
ACT = {"X-Conveyor-Action": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A uvicorn server on a thread, stopped at the end of the test."""

    def __init__(self, app: Conveyor) -> None:
        # Throttling off: these tests send hundreds of wrong logins on purpose
        # (tests/security/test_monitor_hardening.py covers the throttle).
        asgi = create_app(app, [f"{ADMIN[0]}:{ADMIN[1]}"], [f"{VIEWER[0]}:{VIEWER[1]}"],
                          throttle=LoginThrottle(limit=1_000_000))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", auth=ADMIN,
                                   timeout=10)
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    """One URL for broker, results and events: the monitor needs nothing else."""
    if request.param == "postgres":
        url = str(request.getfixturevalue("pg_url"))
    else:
        url = (f"memory://monitor-{time.monotonic_ns()}" if request.param == "memory"
               else f"sqlite:///{tmp_path / 'monitor.db'}")
    instance = Conveyor("mon", broker=url, worker_heartbeat_interval=0.2,
                        set_as_current=False)
    yield instance
    instance.close()


@pytest.fixture
def api(app: Conveyor) -> Iterator[httpx.Client]:
    with Served(app) as client:
        yield client


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll until ``check()`` returns something truthy (the worker flushes per heartbeat)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for the monitor to show it"
        time.sleep(0.1)


# -- authentication -------------------------------------------------------------------
PROTECTED = ["/", "/workers", "/queues", "/tasks", "/tasks/x", "/dead-letters", "/schedules",
             "/api/overview", "/api/status", "/api/workers", "/api/queues", "/api/tasks",
             "/api/tasks/running",
             "/api/tasks/x", "/api/dead-letters", "/api/schedules", "/api/openapi.json",
             "/api/me", "/metrics", "/static/monitor.js", "/nope"]


def test_every_route_needs_credentials(api: httpx.Client) -> None:
    for path in PROTECTED:
        for auth in (None, ("admin", "wrong"), ("nobody", "s3cret"), ("", "")):
            response = httpx.get(f"{api.base_url}{path}", auth=auth)  # type: ignore[arg-type]
            assert response.status_code == 401, (path, auth)
            assert response.headers["www-authenticate"].startswith("Basic")
            assert response.json() == {"error": "authentication required"}  # monitoring.md
    assert httpx.post(f"{api.base_url}/api/tasks/x/revoke", headers=ACT).status_code == 401
    assert api.get("/api/me").json() == {"user": "admin", "role": "admin"}
    assert api.get("/").headers["content-security-policy"].startswith("default-src 'self'")


def test_read_only_users_look_but_do_not_act(api: httpx.Client) -> None:
    viewer = {"auth": VIEWER}
    assert api.get("/api/workers", **viewer).status_code == 200  # type: ignore[arg-type]
    denied = api.post("/api/tasks/x/revoke", headers=ACT, **viewer)  # type: ignore[arg-type]
    assert denied.status_code == 403
    assert denied.json() == {"error": "read-only user: actions are not allowed"}
    missing = api.post("/api/tasks/x/revoke")
    assert missing.status_code == 403  # no X-Conveyor-Action
    assert missing.json() == {"error": "missing X-Conveyor-Action header"}


def test_credentials_are_compared_in_constant_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown user, wrong password and a match all compare against every account."""
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    auth = Authenticator(parse_users(["a:1,b:2", "c:3"]) + parse_users(["d:4"], "readonly"))
    import base64

    counts = []
    for user, password in (("a", "1"), ("d", "4"), ("a", "x"), ("zz", "1"), ("", "")):
        calls.clear()
        header = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
        auth.role(header)
        counts.append(len(calls))
    calls.clear()
    auth.role(None)
    counts.append(len(calls))
    assert len(set(counts)) == 1 and counts[0] == 8
    assert auth.role(b"Basic " + base64.b64encode(b"d:4")) == ("d", "readonly")
    with pytest.raises(ValueError):
        parse_users(["no-colon"])


# -- what the pages show ------------------------------------------------------------------
def _tasks(app: Conveyor) -> SimpleNamespace:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def boom(code: str) -> None:
        raise ValueError(f"kaput {code}")

    @app.task(bind=True)
    def crunch(self: Any, steps: int) -> int:
        for step in range(steps):
            self.update_state(state="PROGRESS", meta={"current": step + 1, "total": steps})
            time.sleep(0.2)
        return steps

    rejected: list[int] = []

    @app.task
    def picky(value: int) -> int:
        if not rejected:
            rejected.append(value)
            raise Reject("not today")
        return value

    return SimpleNamespace(add=add, boom=boom, crunch=crunch, picky=picky)


def test_pages_show_real_numbers(app: Conveyor, api: httpx.Client) -> None:
    t = _tasks(app)
    with run_worker(app, concurrency=2) as worker:
        sums = [t.add.delay(i, i) for i in range(7)]
        failed = t.boom.delay("X1")
        for result in sums:
            result.get(timeout=20)
        failed.get(timeout=20, propagate=False)
        slow = t.crunch.delay(10)

        running = eventually(lambda: [r for r in api.get("/api/tasks/running").json()["tasks"]
                                      if r["id"] == slow.id and r["progress"]])
        assert running[0]["task"].endswith("crunch") and 0 < running[0]["progress"] <= 100
        assert slow.get(timeout=20) == 10
        worker.join()

        def all_flushed() -> dict[str, Any]:
            body = api.get("/api/overview").json()
            return body if body["totals"]["total"] >= 9 else {}

        overview = eventually(all_flushed)

        def counted() -> list[dict[str, Any]]:
            # A thread pool's tasks report from their own threads: the last one can
            # reach the events a heartbeat writes after that heartbeat counted the
            # worker's totals, which the next heartbeat then carries.
            found = api.get("/api/workers").json()["workers"]
            return found if sum(w["processed"] for w in found) >= 9 else []

        workers = eventually(counted)
    totals = overview["totals"]
    assert (totals["SUCCESS"], totals["FAILURE"]) == (8, 1)
    by_task = {row["name"].rsplit(".", 1)[-1]: row for row in overview["tasks"]}
    assert by_task["add"]["SUCCESS"] == 7 and by_task["boom"]["FAILURE"] == 1
    assert overview["latency"]["runtime"]["p50"] is not None
    assert by_task["crunch"]["runtime_p50"] >= 1.0  # ten steps of 0.2 s
    assert sum(p["SUCCESS"] for p in overview["series"]) == 8
    assert overview["rates"]["failure"] == pytest.approx(1 / 9)
    assert api.get("/api/overview", params={"window": "24h"}).json()["totals"]["total"] == 9

    [w] = workers
    assert w["online"] and w["processed"] == 9 and w["failed"] == 1 and w["concurrency"] == 2

    found = api.get("/api/tasks", params={"name": "boom"}).json()["tasks"]
    assert [f["task_id"] for f in found] == [failed.id]
    assert api.get("/api/tasks", params={"state": "failure"}).json()["tasks"] == found
    assert api.get("/api/tasks", params={"id": failed.id[:8]}).json()["tasks"] == found
    assert len(api.get("/api/tasks", params={"name": "add", "limit": 3}).json()["tasks"]) == 3
    assert api.get("/api/tasks", params={"since": "soon"}).status_code == 400

    detail = api.get(f"/api/tasks/{failed.id}").json()
    assert detail["args"] == ["X1"] and detail["exc_type"] == "ValueError"
    assert "kaput X1" in detail["result"] and "Traceback" in detail["traceback"]
    assert [e["kind"] for e in detail["timeline"]][:3] == ["SENT", "STARTED", "FAILURE"]
    assert api.get("/api/tasks/no-such-task").status_code == 404

    assert api.get("/api/queues").json()["queues"][0]["queue"] == "default"
    for page in ("/", "/workers", "/queues", "/tasks", f"/tasks/{failed.id}", "/dead-letters",
                 "/schedules"):
        response = api.get(page)
        assert response.status_code == 200 and "<main>" in response.text


def test_actions_retry_revoke_and_dead_letters(app: Conveyor, api: httpx.Client) -> None:
    t = _tasks(app)
    with run_worker(app, concurrency=2) as worker:
        failed = t.boom.delay("R")
        failed.get(timeout=20, propagate=False)
        retried = api.post(f"/api/tasks/{failed.id}/retry", headers=ACT).json()
        again = app.AsyncResult(retried["new_task_id"])
        again.get(timeout=20, propagate=False)
        assert again.state == states.FAILURE and again.id != failed.id

        later = t.add.apply_async((1, 2), countdown=1.5)
        assert api.post(f"/api/tasks/{later.id}/revoke", headers=ACT).status_code == 200
        later.get(timeout=20, propagate=False)
        assert later.state == states.REVOKED

        letter = t.picky.delay(5)
        dead = eventually(lambda: api.get("/api/dead-letters").json()["dead_letters"])
        assert dead[0]["task_id"] == letter.id and "not today" in dead[0]["reason"]
        assert dead[0]["task"].endswith("picky") and '"args"' in dead[0]["body"]
        replay = api.post("/api/dead-letters/replay", headers=ACT,
                          json={"queue": dead[0]["queue"], "ids": [dead[0]["id"]]})
        assert replay.json() == {"replayed": 1}
        eventually(lambda: (lambda s: s is not None and s.state == states.SUCCESS)(
            app.backend.get(letter.id)))
        assert api.post("/api/dead-letters/replay", headers=ACT, json={}).status_code == 400
        assert api.post("/api/dead-letters/discard", headers=ACT,
                        json={"queue": "default", "ids": None}).json() == {"discarded": 0}
        worker.join()

        def timeline_of(task_id: str) -> list[str]:
            return [e["detail"] for e in api.get(f"/api/tasks/{task_id}").json()["timeline"]]

        assert eventually(lambda: any("revoked by admin" in d for d in timeline_of(later.id)))
        assert any("retried by admin" in d for d in timeline_of(failed.id))
        assert any("replayed from dead letters by admin" in d for d in timeline_of(letter.id))
        assert api.get(f"/api/tasks/{later.id}").json()["revoked"] is True


def test_terminate_is_sent_and_recorded(app: Conveyor, api: httpx.Client) -> None:
    """The kill itself is the prefork supervisor's (see the browser test); here: the request."""
    t = _tasks(app)
    with run_worker(app, concurrency=1):
        slow = t.crunch.delay(8)
        eventually(lambda: api.get("/api/tasks/running").json()["tasks"])
        assert api.post(f"/api/tasks/{slow.id}/terminate", headers=ACT).json() == {
            "task_id": slow.id, "terminate": True}
        assert app.broker.revoked([slow.id]) == {slow.id: True}
        assert "terminated by admin" in str(api.get(f"/api/tasks/{slow.id}").json()["timeline"])


def test_a_monitor_started_later_shows_the_history(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'later.db'}"
    worker_app = Conveyor("later", broker=url, worker_heartbeat_interval=0.2,
                          set_as_current=False)
    t = _tasks(worker_app)
    with run_worker(worker_app) as worker:
        for result in [t.add.delay(i, 1) for i in range(4)]:
            result.get(timeout=20)
        worker.join()
    worker_app.close()
    fresh = Conveyor("later", broker=url, set_as_current=False)  # a new process, in effect
    with Served(fresh) as api:
        assert api.get("/api/overview").json()["totals"]["SUCCESS"] == 4
        [w] = api.get("/api/workers").json()["workers"]
        assert w["online"] is False  # it said goodbye
        metrics = api.get("/metrics").text
    assert f'conveyor_tasks_total{{state="SUCCESS",task="{t.add.name}"}} 4.0' in metrics
    fresh.close()


def test_metrics_exposition(app: Conveyor, api: httpx.Client) -> None:
    t = _tasks(app)
    with run_worker(app) as worker:
        for result in [t.add.delay(1, i) for i in range(3)]:
            result.get(timeout=20)
        worker.join()
        counted = f'conveyor_tasks_total{{state="SUCCESS",task="{t.add.name}"}} 3.0'
        text = eventually(lambda: (lambda body: body if counted in body else "")(
            api.get("/metrics").text))
        assert 'conveyor_worker_up{hostname=' in text and "} 1.0" in text
    assert f'conveyor_task_runtime_seconds_bucket{{le="+Inf",task="{t.add.name}"}} 3.0' in text
    assert 'conveyor_queue_messages{queue="default",state="ready"} 0.0' in text
    assert api.get("/metrics").headers["content-type"].startswith("text/plain")


def test_status_answers_is_it_working(app: Conveyor, api: httpx.Client) -> None:
    """The overview's top: workers online and offline, each queue's depth and oldest
    waiting message, dead letters, beat's leader and next ticks, from a real worker."""
    app.conf.beat_schedule = {"rates": {"task": "mon.add", "schedule": 30.0, "args": (1, 2)},
                              "report": {"task": "mon.add", "schedule": 3600.0, "args": (3, 4)}}

    @app.task(name="mon.add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="mon.refuse")
    def refuse() -> None:
        raise Reject("no", requeue=False)

    with run_worker(app, hostname="gone@box", concurrency=1):
        eventually(lambda: api.get("/api/status").json()["workers"]["online"] == 1)
    # heard from, then stopped: offline
    app.send_task("mon.add", (1, 1), queue="reports")  # nobody consumes "reports"
    sent_at = time.time()
    with run_worker(app, hostname="alive@box", concurrency=1) as worker:
        refuse.delay()
        worker.join()
        status = eventually(lambda: (lambda s: s if s["workers"]["online"] == 1
                                     and s["dead_letters"] == 1 else None)(
            api.get("/api/status").json()))
        assert status["workers"]["offline"] == 1 and status["errors"] == {}
        assert {w["hostname"]: w["online"] for w in status["workers"]["items"]} == {
            "alive@box": True, "gone@box": False}
        queues = {q["queue"]: q for q in status["queues"]}
        waiting = queues["reports"]
        assert waiting["ready"] == 1 and 0 <= waiting["oldest_age"] <= time.time() - sent_at + 1
        assert queues["default"]["ready"] == 0 and queues["default"]["oldest_age"] == 0.0
        assert queues["default"]["dead"] == 1
        beat = status["beat"]
        assert beat["leader"] is None and beat["entries"] == 2  # no beat runs here
        assert [t["name"] for t in beat["next"]] == ["rates", "report"]  # soonest first
    later = api.get("/api/status").json()  # cached for a second at most
    deadline = time.monotonic() + 10
    while later["queues"] and {q["queue"]: q for q in later["queues"]}["reports"][
            "oldest_age"] < 1.0:
        assert time.monotonic() < deadline, "the waiting message does not age"
        time.sleep(0.2)
        later = api.get("/api/status").json()


def test_openapi_describes_every_route(api: httpx.Client) -> None:
    schema = api.get("/api/openapi.json").json()
    assert schema == openapi_schema() and schema["openapi"].startswith("3.1")
    for path, methods in schema["paths"].items():
        action = "revoke" if path.startswith("/api/tasks") else "replay"
        concrete = path.replace("{task_id}", "x").replace("{action}", action)
        for method in methods:
            response = api.request(method.upper(), concrete, headers=ACT, json={"queue": "q"})
            assert response.status_code != 405, path
            if response.status_code == 404:  # the handler's own "unknown task", not routing's
                assert "error" in response.json(), path
    described = set(schema["paths"])
    for route in ("/api/overview", "/api/status", "/api/workers", "/api/queues", "/api/tasks",
                  "/api/tasks/running", "/api/tasks/{task_id}", "/api/tasks/{task_id}/{action}",
                  "/api/dead-letters", "/api/dead-letters/{action}", "/api/schedules",
                  "/api/me", "/metrics"):
        assert route in described


def test_api_latency_is_small(app: Conveyor, api: httpx.Client) -> None:
    t = _tasks(app)
    with run_worker(app) as worker:
        for result in [t.add.delay(1, i) for i in range(20)]:
            result.get(timeout=20)
        worker.join()
    timings = []
    for path in ("/api/overview", "/api/workers", "/api/tasks", "/api/queues",
                 "/api/tasks/running"):
        started = time.perf_counter()
        for _ in range(10):
            assert api.get(path).status_code == 200
        timings.append((time.perf_counter() - started) / 10)
    assert max(timings) < 0.25, timings  # well under the 1.5 s refresh


# -- terminal siblings --------------------------------------------------------------------
def test_status_and_inspect_print_tables(app: Conveyor) -> None:
    t = _tasks(app)
    obj = SimpleNamespace(app=app)
    runner = CliRunner()
    with run_worker(app) as worker:
        t.add.delay(2, 2).get(timeout=20)
        worker.join()
        slow = t.crunch.delay(8)
        eventually(lambda: "crunch" in runner.invoke(inspect_command, ["active"], obj=obj).output)
        status = runner.invoke(status_command, [], obj=obj)
        stats = runner.invoke(inspect_command, ["stats"], obj=obj)
        scheduled = runner.invoke(inspect_command, ["scheduled"], obj=obj)
        slow.get(timeout=20)
    assert status.exit_code == 0 and "online" in status.output and "1 online, 0 offline" in (
        status.output)
    assert stats.exit_code == 0 and t.add.name in stats.output
    assert scheduled.exit_code == 0 and "Delayed messages" in scheduled.output
    as_json = runner.invoke(status_command, ["--json"], obj=obj)
    assert '"processed"' in as_json.output


def test_percentiles_and_progress_conventions() -> None:
    from conveyor._events import BUCKETS, bucket_index
    from conveyor.monitor.data import percentile
    from conveyor.monitor.tasks import progress_of

    counts = [0.0] * (len(BUCKETS) + 1)
    counts[bucket_index(0.2)] = 50  # (0.1, 0.25]
    counts[bucket_index(3.0)] = 50  # (2.5, 5]
    assert 0.1 < (percentile(counts, 0.5) or 0) <= 0.25
    assert 2.5 < (percentile(counts, 0.99) or 0) <= 5
    assert percentile([0.0] * len(counts), 0.5) is None
    assert progress_of({"current": 3, "total": 12}) == 25
    assert progress_of({"percent": 140}) == 100
    assert progress_of({"progress": 0.5}) == 50
    assert progress_of({"current": 1, "total": 0}) is None
    assert progress_of("half") is None
