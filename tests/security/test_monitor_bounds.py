"""Finding 6 of issue 15: the monitor's cost is bounded whatever it is asked.

A task search looks at no more than ``api.SCAN`` index entries however little
its filter matches, and says when older entries may match; a dead letter of
17 MiB makes no poll of the dead-letter list large; malformed parameters get
a 400 naming the parameter, never a 503 carrying a store URL.  Through the
real monitor app over real SQLite, Redis and PostgreSQL stores.  (Flower, which this
monitor replaces, answers a search by walking every task it holds in memory.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor._events import Batch, TaskEntry, store_for
from conveyor.brokers import Envelope
from conveyor.monitor import api

from .monitor_client import monitor, strict


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def app(url: str) -> Iterator[Conveyor]:
    instance = Conveyor("bounds", broker=url, result_backend=url, set_as_current=False)
    yield instance
    instance.close()


MALFORMED = [
    ("/api/tasks", {"since": "nan"}, "since"),
    ("/api/tasks", {"until": "inf"}, "until"),
    ("/api/tasks", {"since": "-Infinity"}, "since"),
    ("/api/tasks", {"since": "yesterday"}, "since"),
    ("/api/tasks", {"until": "1e400"}, "until"),
    ("/api/tasks", {"limit": "-1"}, "limit"),
    ("/api/tasks", {"limit": "0"}, "limit"),
    ("/api/tasks", {"limit": "ten"}, "limit"),
    ("/api/tasks", {"limit": "1e3"}, "limit"),
    ("/api/tasks", {"limit": "5000"}, "limit"),
    ("/api/dead-letters", {"limit": "-5"}, "limit"),
    ("/api/dead-letters?limit=%ED%A0%80%ff", {}, "limit"),
    ("/api/overview", {"window": "nan"}, "window"),
    ("/api/queues", {"window": "-1h"}, "window"),
    ("/api/dead-letters/body", {"queue": "default"}, "id"),
]


def test_malformed_parameters_get_a_400_naming_them(app: Conveyor) -> None:
    """``?since=nan`` used to reach the store and come back as a 503 with its URL."""
    with monitor(app) as client:
        for path, params, name in MALFORMED:
            answer = client.get(path, params=params or None)
            assert answer.status_code == 400, (path, params, answer.text)
            error = strict(answer.text)["error"]
            assert name in error, (path, params, error)
            assert "://" not in error


def _fill(app: Conveyor, count: int, now: float) -> None:
    """``count`` index entries, one a millisecond back from ``now``; one FAILURE, the oldest."""
    store = store_for(app)
    store.max_tasks = count * 2  # type: ignore[attr-defined]  # keep them all
    entries = [TaskEntry(task_id=f"t{i:06d}", name="proj.job", state="SUCCESS", queue="q",
                         updated_at=now - i * 0.001) for i in range(count)]
    entries[-1].state = "FAILURE"
    for start in range(0, count, 5000):
        store.write(Batch(worker="w", tasks=entries[start:start + 5000]))


def test_a_search_matching_nothing_looks_at_a_bounded_number_of_tasks(app: Conveyor) -> None:
    """The one FAILURE is older than the newest SCAN entries: the first search stops
    there and says more may match; searching on from ``oldest`` finds it."""
    now = time.time()
    count = api.SCAN + 3000
    _fill(app, count, now)
    with monitor(app) as client:
        started = time.perf_counter()
        first = strict(client.get("/api/tasks", params={"state": "FAILURE"}).text)
        took = time.perf_counter() - started
        assert first["tasks"] == [] and first["complete"] is False
        assert first["searched"] == api.SCAN
        assert first["oldest"] == pytest.approx(now - (api.SCAN - 1) * 0.001, abs=1e-3)
        on = strict(client.get("/api/tasks", params={"state": "FAILURE",
                                                     "until": first["oldest"]}).text)
        assert [t["task_id"] for t in on["tasks"]] == [f"t{count - 1:06d}"]
        assert on["complete"] is True
        plain = strict(client.get("/api/tasks", params={"limit": 5}).text)
        assert len(plain["tasks"]) == 5 and plain["complete"] is True
    print(f"search matching nothing among {count} tasks: {took * 1000:.0f} ms")


def test_a_huge_dead_letter_does_not_make_every_poll_huge(app: Conveyor) -> None:
    """A 17 MiB letter made each poll of the page 17.9 MB; now a few kilobytes."""
    body = b'{"id": "big", "task": "nobody.big", "args": ["' + b"x" * (17 << 20) + b'"]}'
    app.broker.enqueue(Envelope(id="big", queue="default", body=body))
    [delivery] = app.broker.reserve(["default"], 1, 30, timeout=1)
    app.broker.dead_letter(delivery, "unknown task")
    with monitor(app) as client:
        answer = client.get("/api/dead-letters")
        assert answer.status_code == 200
        assert len(answer.content) < 20_000
        [letter] = strict(answer.text)["dead_letters"]
        assert letter["truncated"] and letter["size"] == len(body)
        assert "too large to show" in letter["body"]
