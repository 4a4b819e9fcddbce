"""Progress bars in the project's pages: the JSON view, its owner rule, its shapes.

The shapes follow celery-progress's view (``state``, ``complete``, ``success``,
``progress.{pending,current,total,percent,description}``, ``result``), so a
page written for it reads ours; its task side stores ``PROGRESS`` with
``current``/``total``, the keys Celery's documented custom-state example and
our monitor use.  The owner rule is ours: only the session that started a
task (``track``) reads it; anyone else gets the 404 an unknown id gets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.template import Context, Template
from django.test import Client

from conveyor import states
from conveyor.contrib.django.progress import MAX_TRACKED, ProgressRecorder, progress_info, track
from conveyor.result import AsyncResult
from conveyor.testing import run_worker


def wait_until(check: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while (value := check()) is None or value is False:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


@pytest.fixture
def gate() -> Iterator[Any]:
    from tests.django.testapp.tasks import progress_gate

    progress_gate.clear()
    yield progress_gate
    progress_gate.set()  # a task still waiting must not hold the worker


def start(client: Client, **form: int) -> str:
    response = client.post("/start-counting/", {k: str(v) for k, v in form.items()})
    assert response.status_code == 200
    return str(response.json()["task_id"])


def poll(client: Client, task_id: str) -> Any:
    response = client.get(f"/progress/{task_id}/")
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    return response.json()


def test_owner_sees_pending_progress_then_success_and_a_stranger_gets_404(
        app: Any, gate: Any) -> None:
    owner, stranger = Client(), Client()
    task_id = start(owner, steps=4, wait_at=2)
    assert poll(owner, task_id) == {
        "task_id": task_id, "state": states.PENDING, "complete": False, "success": None,
        "progress": {"pending": True, "current": 0, "total": 100, "percent": 0.0,
                     "description": ""}}
    with run_worker(app, queues=["default"]) as worker:
        mid = wait_until(lambda: (info := poll(owner, task_id))["progress"]["current"] == 2
                         and info, "the task to wait at step 2")
        assert mid["state"] == states.PROGRESS
        assert mid["complete"] is False and mid["success"] is None
        assert mid["progress"] == {"pending": False, "current": 2, "total": 4, "percent": 50.0,
                                   "description": "step 2"}
        stranger_answer = stranger.get(f"/progress/{task_id}/")
        assert stranger_answer.status_code == 404
        assert task_id not in stranger_answer.content.decode()
        gate.set()
        worker.join()
    done = poll(owner, task_id)
    assert done == {"task_id": task_id, "state": states.SUCCESS, "complete": True,
                    "success": True, "result": "counted 4",
                    "progress": {"pending": False, "current": 100, "total": 100,
                                 "percent": 100.0, "description": ""}}
    assert stranger.get(f"/progress/{task_id}/").status_code == 404


def test_failure_is_complete_unsuccessful_with_the_message(app: Any) -> None:
    owner = Client()
    task_id = start(owner, steps=5, fail_at=3)
    with run_worker(app, queues=["default"]) as worker:
        worker.join()
    info = poll(owner, task_id)
    assert (info["state"], info["complete"], info["success"]) == (states.FAILURE, True, False)
    assert info["result"] == "step 3 broke"


def test_an_id_nobody_tracked_is_404_like_a_strangers(app: Any) -> None:
    answer = Client().get("/progress/no-such-task/")
    assert (answer.status_code, answer.json()) == (404, {"error": "unknown task"})


def test_the_view_only_answers_get(app: Any) -> None:
    owner = Client()
    task_id = start(owner, steps=1)
    assert owner.post(f"/progress/{task_id}/").status_code == 405


def test_a_session_remembers_only_its_newest_ids(app: Any) -> None:
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.session = SessionStore()
    ids = [track(request, f"task-{n}") for n in range(MAX_TRACKED + 5)]
    kept = request.session["conveyor_progress_tasks"]
    assert kept == ids[5:] and len(kept) == MAX_TRACKED
    track(request, "task-10")  # tracked again: moves to the newest end, not duplicated
    assert request.session["conveyor_progress_tasks"][-1] == "task-10"
    assert request.session["conveyor_progress_tasks"].count("task-10") == 1


def test_without_sessions_it_says_what_is_missing() -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import RequestFactory

    with pytest.raises(ImproperlyConfigured, match="SessionMiddleware"):
        track(RequestFactory().get("/"), "task-1")


class _Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def update_state(self, task_id: str | None = None, state: str = states.PROGRESS,
                     meta: Any = None) -> None:
        self.calls.append((state, meta))


def test_recorder_stores_celery_progress_keys_and_clamps_percent() -> None:
    task = _Recording()
    recorder = ProgressRecorder(task)
    assert recorder.set_progress(1, 3, "one") == (states.PROGRESS, {
        "pending": False, "current": 1, "total": 3, "percent": 33.33, "description": "one"})
    recorder.set_progress(5, 0)
    recorder.set_progress(7, 5)
    assert [meta["percent"] for _, meta in task.calls[1:]] == [0.0, 100.0]


@pytest.mark.parametrize(("meta", "expected"), [
    ({"current": 3, "total": 12}, {"pending": False, "current": 3, "total": 12,
                                   "percent": 25.0, "description": ""}),
    ("halfway", {"pending": False, "current": 0, "total": 100, "percent": 0.0,
                 "description": ""}),
    ({"current": "x", "total": 2}, {"pending": False, "current": 0, "total": 100,
                                    "percent": 0.0, "description": ""}),
])
def test_progress_written_by_plain_update_state_is_filled_in(
        app: Any, meta: Any, expected: dict[str, Any]) -> None:
    """The monitor's documented form, ``update_state(meta={"current", "total"})``."""
    app.update_state("plain", states.PROGRESS, meta)
    info = progress_info(AsyncResult("plain", app=app))
    assert (info["state"], info["complete"], info["progress"]) == (
        states.PROGRESS, False, expected)


def test_revoked_is_complete_and_retry_keeps_polling(app: Any) -> None:
    from conveyor._context import Request

    app.store_state(Request(id="gone"), states.REVOKED, exc=RuntimeError("revoked"))
    revoked = progress_info(AsyncResult("gone", app=app))
    assert (revoked["complete"], revoked["success"], revoked["result"]) == (
        True, False, "Task revoked")
    app.store_state(Request(id="again"), states.RETRY, exc=ConnectionError("busy"))
    retry = progress_info(AsyncResult("again", app=app))
    assert (retry["complete"], retry["success"], retry["result"]) == (False, None, "busy")


def test_template_tag_renders_accessible_markup_pointing_at_the_view(app: Any) -> None:
    html = Template("{% load conveyor_progress %}{% progress_bar task_id 'Import' %}").render(
        Context({"task_id": "abc-123"}))
    assert 'data-conveyor-progress="/progress/abc-123/"' in html
    assert 'role="progressbar"' in html and 'aria-label="Import"' in html
    assert 'aria-valuenow="0"' in html and 'aria-live="polite"' in html
    assert "conveyor/progress.js" in html and "<script>" not in html  # no inline script
