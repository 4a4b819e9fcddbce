"""Per-call and per-task options on the real worker path (in-process worker).

Each runs on memory, SQLite and Redis: the message is encoded, stored,
reserved, decoded and acknowledged as in production.
"""

from __future__ import annotations

import threading
import time

import pytest

from conveyor import Conveyor, states
from conveyor._events import EventStore
from conveyor.testing import run_worker


def test_apply_async_ignore_result_stores_nothing(backend_url: str) -> None:
    """Celery: apply_async(ignore_result=True) skips storing this call's result
    (app/task.py apply_async docs), while other calls of the task still store."""
    app = Conveyor("opts", broker=backend_url)
    ran = threading.Event()

    @app.task
    def add(a: int, b: int) -> int:
        if a == 100:
            ran.set()
        return a + b

    with run_worker(app) as worker:
        stored = add.apply_async((1, 2))
        ignored = add.apply_async((100, 2), ignore_result=True)
        assert stored.get(timeout=20) == 3
        assert ran.wait(20)
        worker.join()
    assert app.AsyncResult(ignored.id).state == states.PENDING


def test_track_started_as_a_task_option(backend_url: str) -> None:
    """Celery: Task.track_started (task option, not only the setting) records STARTED."""
    app = Conveyor("opts", broker=backend_url)
    release = threading.Event()

    @app.task(track_started=True)
    def tracked() -> str:
        release.wait(20)
        return "done"

    @app.task
    def untracked() -> str:
        release.wait(20)
        return "done"

    with run_worker(app, concurrency=2):
        one, two = tracked.delay(), untracked.delay()
        deadline = time.monotonic() + 20
        while app.AsyncResult(one.id).state != states.STARTED:
            assert time.monotonic() < deadline, "STARTED was never recorded"
            time.sleep(0.02)
        assert app.AsyncResult(two.id).state == states.PENDING  # the setting is off
        release.set()
        assert one.get(timeout=20) == two.get(timeout=20) == "done"


def test_shadow_names_the_call_in_results_and_the_monitor(sqlite_url: str) -> None:
    """Celery: apply_async(shadow=...) shows another name in logs and the monitor
    (worker/request.py takes it as the request's name); the real task runs."""
    app = Conveyor("opts", broker=sqlite_url, worker_heartbeat_interval=0.2)

    @app.task
    def render(page: str) -> str:
        return f"<{page}>"

    with run_worker(app) as worker:
        result = render.apply_async(("home",), shadow="render[home]")
        assert result.get(timeout=20) == "<home>"
        assert app.AsyncResult(result.id).name == "render[home]"
        worker.join()
        store = app.events
        assert isinstance(store, EventStore)
        deadline = time.monotonic() + 10
        while (entry := store.task(result.id)) is None or entry.state != states.SUCCESS:
            assert time.monotonic() < deadline, "the monitor never listed the task"
            time.sleep(0.05)
    assert entry.name == "render[home]"


@pytest.mark.parametrize(("late", "inflight"), [(False, 0), (True, 1)])
def test_task_acks_late_setting_decides_when_the_message_is_acked(
        backend_url: str, late: bool, inflight: int) -> None:
    """Celery: task_acks_late=False (Celery's default) acknowledges the message
    before the task runs (worker/request.py on_accepted); late acks after it."""
    app = Conveyor("opts", broker=backend_url, task_acks_late=late)
    seen: list[int] = []
    looked = threading.Event()

    @app.task
    def look() -> None:
        seen.append(app.broker.stats(["default"])[0].inflight)
        looked.set()

    with run_worker(app, concurrency=1) as worker:
        look.delay()
        assert looked.wait(20)
        worker.join()
    assert seen == [inflight]


def test_task_default_rate_limit_limits_tasks_without_their_own(backend_url: str) -> None:
    """Celery: task_default_rate_limit is the rate_limit of every task without one
    (app/task.py reads it from the setting), enforced per worker."""
    app = Conveyor("opts", broker=backend_url, task_default_rate_limit="4/s")
    starts: list[float] = []

    @app.task
    def tick() -> None:
        starts.append(time.monotonic())

    with run_worker(app, concurrency=2) as worker:
        results = [tick.delay() for _ in range(4)]
        for result in results:
            result.get(timeout=20)
        worker.join()
    starts.sort()
    assert all(t - starts[0] >= k * 0.25 - 0.1 for k, t in enumerate(starts)), starts
