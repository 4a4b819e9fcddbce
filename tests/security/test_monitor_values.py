"""Finding 3 of issue 15: one record cannot break the monitor.

Dead letters and task records holding NaN, Infinity, lone surrogates, deep
nesting or megabytes are listed, shown cut short with a link to the whole,
and acted on, through the real monitor app over real SQLite and Redis
stores, after a real (in-process) worker wrote them.  Flower, Celery's
monitor, has no such guarantee to match: it renders ``repr`` of what the
events carry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.brokers import Envelope
from conveyor.monitor import values
from conveyor.testing import run_worker

from .monitor_client import ACT, monitor, strict


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def app(url: str) -> Iterator[Conveyor]:
    instance = Conveyor("values", broker=url, result_backend=url, set_as_current=False,
                        worker_heartbeat_interval=0.2)

    @instance.task(name="values.give")
    def give(kind: str) -> Any:
        return {"nan": float("nan"), "inf": float("-inf"), "huge": "y" * 3_000_000,
                "deep": _deep(150), "wide": list(range(100_000))}[kind]

    @instance.task(name="values.fail")
    def fail() -> None:
        raise ValueError("no \ud800 here")

    yield instance
    instance.close()


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _letter(body: bytes) -> Envelope:
    return Envelope(id=f"dl-{uuid.uuid4().hex[:8]}", queue="default", body=body)


BAD_LETTERS = {
    "nan": b'{"id": "a1", "task": "nobody.nan", "args": [NaN, Infinity, -Infinity], "v": 1}',
    "surrogate": b'{"id": "a2", "task": "nobody.\\ud800", "args": ["\\udfff"], "v": 1}',
    "deep": b'{"id": "a3", "task": "values.give", "args": [' + b"[" * 6000 + b"]" * 6000 + b"]}",
    "huge": json.dumps({"id": "a4", "task": "nobody.huge", "args": ["z" * 3_000_000]}).encode(),
    "binary": b"\xff\xfe not even UTF-8",
}


def test_dead_letters_with_any_content_list_replay_and_discard(app: Conveyor) -> None:
    """NaN, a lone surrogate and deep nesting each used to make /api/dead-letters answer
    500, so the page could no longer list, replay or discard anything."""
    letters = {kind: _letter(body) for kind, body in BAD_LETTERS.items()}
    app.broker.enqueue_many(list(letters.values()))
    with run_worker(app, concurrency=1) as worker:
        worker.join(30)
    assert app.broker.stats(["default"])[0].dead == len(letters)
    with monitor(app) as client:
        answer = client.get("/api/dead-letters")
        assert answer.status_code == 200, answer.text
        assert len(answer.content) < 100_000  # the 3 MB letter is cut short
        listed = {d["id"]: d for d in strict(answer.text)["dead_letters"]}
        assert set(listed) == {e.id for e in letters.values()}
        nan = listed[letters["nan"].id]
        assert nan["args"] == ["NaN", "Infinity", "-Infinity"]
        assert listed[letters["surrogate"].id]["task"] == "nobody.\\ud800"
        assert "nested too deeply" in listed[letters["deep"].id]["reason"]
        huge = listed[letters["huge"].id]
        assert huge["truncated"] and huge["size"] == len(BAD_LETTERS["huge"])
        whole = client.get("/api/dead-letters/body",
                           params={"queue": "default", "id": letters["huge"].id})
        assert whole.status_code == 200 and whole.content == BAD_LETTERS["huge"]
        assert "attachment" in whole.headers["content-disposition"]
        assert client.get("/dead-letters").status_code == 200
        replay = client.post("/api/dead-letters/replay", headers=ACT,
                             json={"queue": "default", "ids": [letters["nan"].id]})
        assert replay.status_code == 200 and replay.json()["replayed"] == 1
        discard = client.post("/api/dead-letters/discard", headers=ACT,
                              json={"queue": "default", "ids": None})
        assert discard.status_code == 200 and discard.json()["discarded"] == len(letters) - 1
    [stats] = app.broker.stats(["default"])
    assert (stats.ready, stats.dead) == (1, 0)


@pytest.mark.parametrize("kind,shown", [("nan", "NaN"), ("inf", "-Infinity")])
def test_a_task_returning_nan_has_a_task_page(app: Conveyor, kind: str, shown: str) -> None:
    """A task that returned float("nan") made its task page answer 500."""
    with run_worker(app, concurrency=1) as worker:
        result = app.tasks["values.give"].delay(kind)
        result.get(timeout=15)
        worker.join(15)
    with monitor(app) as client:
        answer = client.get(f"/api/tasks/{result.id}")
        assert answer.status_code == 200, answer.text
        detail = strict(answer.text)
        assert detail["result"] == shown and detail["state"] == "SUCCESS"
        assert not detail["truncated"]
        assert client.get(f"/tasks/{result.id}").status_code == 200


@pytest.mark.parametrize("kind", ["huge", "deep", "wide"])
def test_huge_and_deep_results_are_cut_short_with_the_whole_downloadable(
        app: Conveyor, kind: str) -> None:
    with run_worker(app, concurrency=1) as worker:
        result = app.tasks["values.give"].delay(kind)
        result.get(timeout=30)
        worker.join(15)
    with monitor(app) as client:
        answer = client.get(f"/api/tasks/{result.id}")
        assert answer.status_code == 200, answer.text
        assert len(answer.content) < 4 * values.BUDGET
        assert strict(answer.text)["truncated"] is True
        whole = client.get(f"/api/tasks/{result.id}/record")
        assert whole.status_code == 200
        assert whole.content == app.backend.get(result.id).payload  # type: ignore[union-attr]


def test_a_failure_whose_message_holds_a_lone_surrogate_is_shown(app: Conveyor) -> None:
    """The record stores the text as a JSON escape; the page shows it escaped."""
    with run_worker(app, concurrency=1) as worker:
        result = app.tasks["values.fail"].delay()
        with pytest.raises(ValueError):
            result.get(timeout=15)
        worker.join(15)
    with monitor(app) as client:
        answer = client.get(f"/api/tasks/{result.id}")
        assert answer.status_code == 200, answer.text
        assert strict(answer.text)["result"] == "no \\ud800 here"
