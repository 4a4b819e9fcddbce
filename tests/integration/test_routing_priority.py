"""Routing and priority through a real worker, on every store (memory, SQLite, Redis)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, Queue
from conveyor.testing import run_worker

T = 15.0


@pytest.fixture
def make_app(backend_url: str) -> Iterator[Any]:
    made: list[Conveyor] = []

    def build(**settings: Any) -> Conveyor:
        app = Conveyor("routing-priority", broker=backend_url, backend=backend_url,
                       set_as_current=False, **settings)
        made.append(app)
        return app

    yield build
    for app in made:
        app.close()


def test_worker_consumes_queue_objects_and_regex_routes_reach_them(make_app: Any) -> None:
    """Celery: task_queues = (Queue(...), ...) is what a worker without -Q consumes."""
    app = make_app(task_queues=(Queue("default"), Queue("reports")),
                   task_routes=[[(re.compile(r"^reports\."), {"queue": "reports"})]])

    @app.task(name="reports.build", bind=True)
    def build(self: Any) -> str:
        return str(self.request.delivery_info["queue"])

    with run_worker(app, queues=None) as worker:
        assert worker.worker.queues == ["default", "reports"]
        assert build.delay().get(timeout=T) == "reports"


def _run_in_order(app: Conveyor, sends: list[tuple[str, int | None]]) -> list[str]:
    ran: list[str] = []
    lock = threading.Lock()

    @app.task(name="prio.note")
    def note(label: str) -> None:
        with lock:
            ran.append(label)

    for label, priority in sends:
        note.apply_async((label,), priority=priority)
    with run_worker(app, concurrency=1, prefetch_multiplier=1) as worker:
        worker.join(timeout=T)
    return ran


SENDS: list[tuple[str, int | None]] = [
    ("p9", 9), ("p0", 0), ("p5", 5), ("none", None), ("p3", 3), ("p1", 1)]


def test_lower_priority_runs_first_in_kombus_default_steps(make_app: Any) -> None:
    """Celery on Redis: kombu serves 0 first, no priority as 0, steps [0, 3, 6, 9] (FIFO within)."""
    ran = _run_in_order(make_app(), SENDS)
    assert ran == ["p0", "none", "p1", "p5", "p3", "p9"]


def test_priority_steps_of_every_level_keep_all_ten_apart(make_app: Any) -> None:
    """Celery: broker_transport_options priority_steps=list(range(10)) (kombu Redis transport)."""
    app = make_app(broker_transport_options={"priority_steps": list(range(10))})
    assert _run_in_order(app, SENDS) == ["p0", "none", "p1", "p3", "p5", "p9"]


@pytest.mark.parametrize("inherit", [True, False])
def test_children_inherit_the_parent_priority_when_asked(make_app: Any, inherit: bool) -> None:
    """Celery: app/base.py send_task takes the parent's priority (task_inherit_parent_priority)."""
    app = make_app(task_inherit_parent_priority=inherit)
    seen: list[Any] = []
    done = threading.Event()

    @app.task(name="prio.child", bind=True)
    def child(self: Any) -> None:
        seen.append(self.request.delivery_info["priority"])
        done.set()

    @app.task(name="prio.parent")
    def parent() -> None:
        child.delay()

    with run_worker(app):
        parent.apply_async(priority=7)
        assert done.wait(T)
    assert seen == [7 if inherit else 0]
