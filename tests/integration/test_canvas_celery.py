"""Canvas and result behaviour that Celery code relies on, through a real worker.

Each test runs a threads-pool worker in-process on every store (memory,
SQLite, Redis): messages are encoded, stored, reserved, decoded and run.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conveyor import Conveyor, chain, group, signature
from conveyor._context import Request
from conveyor.testing import run_worker

T = 15.0


@pytest.fixture
def app(backend_url: str) -> Iterator[Conveyor]:
    application = Conveyor("canvas-celery", broker=backend_url, backend=backend_url,
                           set_as_current=False)
    yield application
    application.close()


class Seen:
    """What callbacks saw, with a bounded wait for the expected count."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = threading.Condition()

    def add(self, item: Any) -> None:
        with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = T) -> list[Any]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.items) >= count, timeout)
        assert len(self.items) >= count, f"saw {self.items}, wanted {count} items"
        return self.items


def test_immutable_signature_runs_end_to_end(app: Conveyor) -> None:
    """Celery: canvas.py signature(..., immutable=True) ignores the parent's result."""
    @app.task(name="cc.add")
    def add(x: int, y: int) -> int:
        return x + y

    fixed = signature("cc.add", (10, 20), immutable=True, app=app)
    with run_worker(app):
        assert fixed.delay().get(timeout=T) == 30
        assert chain(add.s(1, 1), fixed).delay().get(timeout=T) == 30


def test_set_and_link_without_reassigning_keep_their_effect(app: Conveyor) -> None:
    """Celery: canvas.py Signature.set/link mutate the signature (link returns the callback)."""
    seen = Seen()

    @app.task(name="cc.where", bind=True)
    def where(self: Any, x: int) -> str:
        return f"{x} on {self.request.delivery_info['queue']}"

    @app.task(name="cc.record")
    def record(value: str) -> None:
        seen.add(value)

    sig = where.s(5)
    sig.set(queue="elsewhere")
    returned = sig.link(record.s())
    assert returned.task == "cc.record"
    with run_worker(app, queues=["elsewhere", "default"]):
        result = sig.delay()
        assert result.get(timeout=T) == "5 on elsewhere"
        assert seen.wait_for(1) == ["5 on elsewhere"]


def test_errbacks_in_both_styles_run(app: Conveyor) -> None:
    """Celery: backends/base.py _call_task_errbacks calls (request, exc, traceback)
    errbacks in the worker and sends one-argument errbacks with the task id."""
    seen = Seen()

    @app.task(name="cc.boom")
    def boom() -> None:
        raise KeyError("missing")

    @app.task(name="cc.current_style")
    def current_style(request: Request, exc: BaseException, traceback: str) -> None:
        seen.add(("current", request.id, request.task, type(exc).__name__,
                  "KeyError" in traceback))

    @app.task(name="cc.old_style")
    def old_style(task_id: str) -> None:
        seen.add(("old", task_id))

    @app.task(name="cc.raising_errback")
    def raising_errback(request: Request, exc: BaseException, traceback: str) -> None:
        raise RuntimeError("errback bug")

    sig = boom.s()
    sig.link_error(raising_errback.s())  # logged; the others still run
    sig.link_error(current_style.s())
    sig.link_error(old_style.s())
    with run_worker(app):
        result = sig.delay()
        found = sorted(seen.wait_for(2))
    assert found == [("current", result.id, "cc.boom", "KeyError", True), ("old", result.id)]
    assert result.failed()


def test_get_inside_a_task_is_refused_unless_allowed(app: Conveyor) -> None:
    """Celery: result.py assert_will_not_block (disable_sync_subtasks=True by default),
    in AsyncResult.get and GroupResult.get alike."""
    @app.task(name="cc.child")
    def child() -> int:
        return 7

    @app.task(name="cc.waits")
    def waits(allow: bool) -> Any:
        pending = child.delay()
        try:
            group(child.s(), child.s()).delay().get(timeout=T)
        except RuntimeError:
            pass
        else:
            return "a group result was waited on"
        if allow:
            return pending.get(timeout=T, disable_sync_subtasks=False)
        try:
            pending.get(timeout=T)
        except RuntimeError as exc:
            return f"refused: {exc}"
        return "allowed"

    with run_worker(app, concurrency=2):
        assert waits.delay(False).get(timeout=T).startswith("refused: never call result.get()")
        assert waits.delay(True).get(timeout=T) == 7


def test_date_done_is_an_aware_utc_datetime(app: Conveyor) -> None:
    """Celery: result.py AsyncResult.date_done is a datetime in UTC."""
    @app.task(name="cc.noop")
    def noop() -> None:
        return None

    before = dt.datetime.now(dt.timezone.utc)
    with run_worker(app):
        result = noop.delay()
        result.get(timeout=T)
    done = result.date_done
    assert isinstance(done, dt.datetime) and done.utcoffset() == dt.timedelta(0)
    assert before - dt.timedelta(seconds=1) <= done <= dt.datetime.now(dt.timezone.utc)


@pytest.mark.parametrize(("enable_utc", "zone"), [(True, "UTC"), (False, "Asia/Tokyo")])
def test_naive_eta_is_read_as_celery_reads_it(app: Conveyor, enable_utc: bool,
                                              zone: str) -> None:
    """Celery: a naive eta is UTC under enable_utc, else in the app's timezone."""
    app.conf.update({"enable_utc": enable_utc, "timezone": "Asia/Tokyo"})

    @app.task(name="cc.when", bind=True)
    def when(self: Any) -> float:
        return float(self.request.eta)

    due = dt.datetime.now(ZoneInfo(zone)) + dt.timedelta(seconds=1)
    naive = due.replace(tzinfo=None)
    with run_worker(app):
        sent = time.time()
        result = when.apply_async(eta=naive)
        assert result.get(timeout=T) == pytest.approx(due.timestamp(), abs=0.01)
        assert time.time() - sent >= 0.5  # it waited for its time, not longer than T
