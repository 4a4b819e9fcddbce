"""Canvas end to end through real workers, on memory, SQLite, Redis and a PostgreSQL broker.

Every composition from docs/canvas.md runs once as it should and once with a
failure in the middle.  Tasks append lines to a ledger file, so "the body ran
exactly once" and "the errback was called once" are counted from what really
ran, not from in-process state.  The last tests run a chord through a real
prefork worker (two processes) on SQLite and Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, GroupResult, chain, chord, group, states
from conveyor.canvas import Signature
from conveyor.exceptions import TimeLimitExceeded
from conveyor.result import AsyncResult
from conveyor.testing import ThreadedWorker, run_worker

from .processes import ROOT, stop, wait_for, worker_env

T = 30.0  # generous bound on every wait; the tests finish far sooner


class Flow:
    """A fresh app with the tasks the tests compose, and the ledger they write."""

    def __init__(self, url: str, ledger: Path, broker: str | None = None) -> None:
        self.url = url  # where results live
        self.broker = broker or url
        self.ledger = ledger
        self.app = app = Conveyor("canvas-test", broker=self.broker, backend=url,
                                  set_as_current=False)
        note = self.note

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        @app.task
        def mul(x: int, y: int) -> int:
            return x * y

        @app.task
        def tsum(values: list[int]) -> int:
            return sum(values)

        @app.task
        def echo(value: Any, delay: float = 0.0) -> Any:
            time.sleep(delay)
            return value

        @app.task
        def fail(*args: Any) -> None:
            raise ValueError("boom")

        @app.task
        def never(*args: Any) -> None:
            note("never", repr(args))

        @app.task
        def body(values: list[Any]) -> list[Any]:
            note("body", str(len(values)))
            return values

        @app.task
        def on_error(task_id: str) -> None:
            note("errback", task_id)

        @app.task
        def on_done(value: Any) -> None:
            note("callback", repr(value))

        @app.task
        def spawn(n: int) -> list[str]:
            return [add.delay(i, i).id for i in range(n)]

        self.add, self.mul, self.tsum, self.echo, self.fail = add, mul, tsum, echo, fail
        self.never, self.body, self.on_error, self.on_done = never, body, on_error, on_done
        self.spawn = spawn
        self.worker: ThreadedWorker | None = None

    def note(self, event: str, detail: str) -> None:
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {detail}\n".encode())
        finally:
            os.close(fd)

    def events(self, kind: str) -> list[str]:
        """Details of ``kind`` lines, once every queued follow-up has run."""
        if self.worker is not None:
            self.worker.join(T)
        if not self.ledger.exists():
            return []
        lines = [line.split(" ", 1) for line in self.ledger.read_text().splitlines()]
        return [detail for event, detail in lines if event == kind]


@pytest.fixture
def flow(app_urls: tuple[str, str], tmp_path: Path) -> Iterator[Flow]:
    broker, backend = app_urls
    made = Flow(backend, tmp_path / "ledger.txt", broker=broker)
    with run_worker(made.app, concurrency=4) as worker:
        made.worker = worker
        yield made
    made.app.close()


def failed_with_boom(result: AsyncResult | GroupResult) -> None:
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=T)


# -- chain ---------------------------------------------------------------------------

def test_chain_passes_each_result_to_the_next_step(flow: Flow) -> None:
    result = chain(flow.add.s(1, 1), flow.add.s(10), flow.mul.s(3)).delay()
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=T) == 36
    assert result.parent is not None and result.parent.get(timeout=T) == 12
    first = result.parent.parent
    assert isinstance(first, AsyncResult) and first.get(timeout=T) == 2 and first.parent is None
    assert (flow.add.s(1, 1) | flow.add.si(5, 5)).delay().get(timeout=T) == 10


def test_chain_failure_stops_the_chain_and_calls_its_errback_once(flow: Flow) -> None:
    flow_ = chain(flow.add.s(1, 1), flow.fail.s(), flow.never.s(), flow.never.s())
    result = flow_.on_error(flow.on_error.s()).delay()
    failed_with_boom(result)
    failing = result.parent.parent  # type: ignore[union-attr]
    assert isinstance(failing, AsyncResult) and failing.state == states.FAILURE
    assert failing.parent is not None and failing.parent.get(timeout=T) == 2
    assert result.state == states.FAILURE  # later steps fail too: nothing waits forever
    assert flow.events("errback") == [failing.id]
    assert flow.events("never") == []


# -- group ---------------------------------------------------------------------------

def test_group_results_come_in_group_order(flow: Flow) -> None:
    # Later members finish first; the result list keeps the group's order.
    result = group(flow.echo.s(i, 0.03 * (6 - i)) for i in range(6)).delay()
    assert result.get(timeout=T) == list(range(6))
    assert result.completed_count() == 6
    assert result.ready() and result.successful() and not result.failed()


def test_group_failure_is_reported_and_its_errback_called_once(flow: Flow) -> None:
    members = group(flow.add.s(1, 1), flow.fail.s(), flow.fail.s(), flow.add.s(2, 2))
    result = members.on_error(flow.on_error.s()).delay()
    failed_with_boom(result)
    values = result.get(timeout=T, propagate=False)
    assert values[0] == 2 and isinstance(values[1], ValueError) and values[3] == 4
    assert result.ready() and result.failed() and not result.successful()
    assert result.completed_count() == 2
    (errback,) = flow.events("errback")
    assert errback in (result[1].id, result[2].id)


def test_a_large_group_sent_from_one_template_restores_and_fails_once(flow: Flow) -> None:
    """Members after the first are encoded from a template (conveyor/_batching.py):
    the group still restores by id, returns values in order, and one failing
    member among hundreds calls the group's errback once."""
    result = group(flow.add.s(i, i) for i in range(300)).delay()
    assert result.get(timeout=T) == [2 * i for i in range(300)]
    restored = GroupResult.restore(result.id, app=flow.app)
    assert restored is not None and restored.get(timeout=T) == [2 * i for i in range(300)]
    members = [flow.add.s(i, 0) for i in range(150)] + [flow.fail.s()] + [
        flow.add.s(i, 0) for i in range(150)]
    failing = group(members).on_error(flow.on_error.s()).delay()
    failed_with_boom(failing)
    assert flow.events("errback") == [failing[150].id]


# -- chord ---------------------------------------------------------------------------

def test_chord_body_runs_once_with_results_in_header_order(flow: Flow) -> None:
    header = [flow.echo.s(i, 0.03 * (8 - i)) for i in range(8)]
    result = chord(header, flow.body.s()).delay()
    assert result.get(timeout=T) == list(range(8))
    assert isinstance(result.parent, GroupResult)
    assert result.parent.get(timeout=T) == list(range(8))
    piped = (group(flow.add.s(i, i) for i in range(4)) | flow.tsum.s()).delay()
    assert piped.get(timeout=T) == 12
    assert flow.events("body") == ["8"]


def test_a_large_chord_joins_once_in_header_order(flow: Flow) -> None:
    result = chord((flow.echo.s(i) for i in range(400)), flow.body.s()).delay()
    assert result.get(timeout=T) == list(range(400))
    assert flow.events("body") == ["400"]


def test_failing_header_fails_the_chord_without_running_the_body(flow: Flow) -> None:
    header = [flow.add.s(1, 1), flow.fail.s(), flow.fail.s(), flow.add.s(2, 2)]
    result = chord(header, flow.body.s()).on_error(flow.on_error.s()).delay()
    failed_with_boom(result)
    assert result.state == states.FAILURE
    assert flow.events("body") == []
    (errback,) = flow.events("errback")
    assert isinstance(result.parent, GroupResult)
    assert errback in (result.parent[1].id, result.parent[2].id)


def test_empty_chord_header_calls_the_body_with_an_empty_list(flow: Flow) -> None:
    assert chord([], flow.body.s()).delay().get(timeout=T) == []
    assert flow.events("body") == ["0"]


# -- nesting -------------------------------------------------------------------------

def test_chord_inside_a_chain_feeds_the_next_steps(flow: Flow) -> None:
    step = chord([flow.add.s(1), flow.add.s(2)], flow.tsum.s())
    result = chain(flow.add.s(1, 1), step, flow.add.s(10), flow.mul.s(2)).delay()
    assert result.get(timeout=T) == 34  # ((2+1) + (2+2) + 10) * 2
    body = result.parent.parent  # type: ignore[union-attr]
    assert isinstance(body, AsyncResult) and body.get(timeout=T) == 7
    assert isinstance(body.parent, GroupResult) and body.parent.get(timeout=T) == [3, 4]

    broken = chord([flow.add.s(1), flow.fail.s()], flow.body.s())
    result = chain(flow.add.s(1, 1), broken, flow.never.s()).on_error(flow.on_error.s()).delay()
    failed_with_boom(result)
    assert flow.events("body") == [] and flow.events("never") == []
    assert len(flow.events("errback")) == 1


def test_group_as_last_step_of_a_chain_gets_the_result_in_each_member(flow: Flow) -> None:
    result = chain(flow.add.s(1, 1), group(flow.add.s(1), flow.mul.s(10))).delay()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=T) == [3, 20]
    assert result.parent is not None and result.parent.get(timeout=T) == 2

    broken = chain(flow.fail.s(), group(flow.never.s(), flow.never.s())).delay()
    failed_with_boom(broken)
    assert broken.ready() and broken.failed()
    assert flow.events("never") == []


def test_chain_inside_a_group(flow: Flow) -> None:
    result = group(chain(flow.add.s(1, 1), flow.mul.s(5)),
                   chain(flow.add.s(2, 2), flow.add.s(1)), flow.add.s(0, 0)).delay()
    assert result.get(timeout=T) == [10, 5, 0]

    broken = group(chain(flow.add.s(1, 1), flow.fail.s(), flow.never.s()),
                   chain(flow.add.s(2, 2), flow.add.s(1))).delay()
    failed_with_boom(broken)
    assert broken[1].get(timeout=T) == 5 and broken.failed()
    assert flow.events("never") == []


def test_chord_whose_header_holds_chains(flow: Flow) -> None:
    header = [chain(flow.add.s(i, i), flow.mul.s(10)) for i in range(4)]
    assert chord(header, flow.body.s()).delay().get(timeout=T) == [0, 20, 40, 60]

    broken = [chain(flow.add.s(1, 1), flow.mul.s(10)),
              chain(flow.add.s(2, 2), flow.fail.s(), flow.never.s())]
    result = chord(broken, flow.body.s()).on_error(flow.on_error.s()).delay()
    failed_with_boom(result)
    assert flow.events("body") == ["4"] and flow.events("never") == []
    assert len(flow.events("errback")) == 1


def test_chord_whose_body_is_a_chain(flow: Flow) -> None:
    header = [flow.add.s(1, 1), flow.add.s(2, 2)]
    assert chord(header, chain(flow.tsum.s(), flow.mul.s(10))).delay().get(timeout=T) == 60

    body = chain(flow.tsum.s(), flow.fail.s(), flow.never.s())
    result = chord(header, body).on_error(flow.on_error.s()).delay()
    failed_with_boom(result)
    assert flow.events("never") == [] and len(flow.events("errback")) == 1


def test_group_followed_by_a_group(flow: Flow) -> None:
    first = group(flow.add.s(1, 1), flow.add.s(2, 2))
    result = (first | group(flow.tsum.s(), flow.body.s())).delay()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=T) == [6, [2, 4]]
    assert isinstance(result.parent, GroupResult) and result.parent.get(timeout=T) == [2, 4]

    broken = (group(flow.add.s(1, 1), flow.fail.s()) | group(flow.never.s(), flow.never.s()))
    failed_with_boom(broken.delay())
    assert flow.events("never") == []


def test_chord_of_chords_and_groups(flow: Flow) -> None:
    inner = chord([flow.add.s(1, 1), flow.add.s(2, 2)], flow.tsum.s())
    result = chord([inner, group(flow.add.s(3, 3), flow.add.s(4, 4))], flow.body.s()).delay()
    assert result.get(timeout=T) == [6, [6, 8]]

    broken = chord([flow.add.s(1, 1), flow.fail.s()], flow.tsum.s())
    outer = chord([broken, flow.add.s(0, 0)], flow.body.s()).on_error(flow.on_error.s())
    failed_with_boom(outer.delay())
    assert flow.events("body") == ["2"] and len(flow.events("errback")) == 1


# -- callbacks and results -------------------------------------------------------------

def test_link_sends_the_callback_with_the_result(flow: Flow) -> None:
    sig = flow.add.s(2, 3)
    sig.link(flow.on_done.s())
    sig.delay().get(timeout=T)
    assert flow.events("callback") == ["5"]


def test_children_are_the_tasks_a_task_sent(flow: Flow) -> None:
    result = flow.spawn.delay(3)
    ids = result.get(timeout=T)
    assert [child.id for child in result.children] == ids
    assert [child.get(timeout=T) for child in result.children] == [0, 2, 4]


def test_group_result_restores_in_another_app(flow: Flow) -> None:
    result = group(flow.add.s(i, i) for i in range(5)).delay()
    result.get(timeout=T)
    other = Conveyor("canvas-client", broker=flow.broker, backend=flow.url,
                     set_as_current=False)
    restored = GroupResult.restore(result.id, app=other)
    assert restored is not None and restored.get(timeout=T) == [0, 2, 4, 6, 8]
    other.close()


def test_chunks_map_and_starmap(flow: Flow) -> None:
    packed = flow.add.chunks([(i, i) for i in range(10)], 3).delay()
    assert packed.get(timeout=T) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]
    assert flow.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=T) == [3, 7]
    assert flow.echo.map(["a", "b"]).delay().get(timeout=T) == ["a", "b"]
    total = chord(flow.add.chunks([(i, 1) for i in range(6)], 2).group(), flow.body.s())
    assert total.delay().get(timeout=T) == [[1, 2], [3, 4], [5, 6]]


# -- size ------------------------------------------------------------------------------

def test_chord_of_5000_fires_once_in_order(backend_url: str, tmp_path: Path) -> None:
    made = Flow(backend_url, tmp_path / "ledger.txt")
    with run_worker(made.app, concurrency=8) as worker:
        made.worker = worker
        started = time.monotonic()
        result = chord([made.echo.s(i) for i in range(5000)], made.body.s()).delay()
        assert result.get(timeout=120) == list(range(5000))
        elapsed = time.monotonic() - started
        assert made.events("body") == ["5000"]
    made.app.close()
    print(f"chord of 5000 on {backend_url.split(':')[0]}: {elapsed:.1f}s")


# -- across processes ------------------------------------------------------------------

APP = "tests.integration.canvas_app"


@pytest.fixture(params=["sqlite", "redis"])
def process_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


def _by_name(app: Conveyor, name: str, *args: Any) -> Signature:
    return Signature(f"{APP}.{name}", args, app=app)


def _drained(app: Conveyor) -> bool:
    return sum(s.ready + s.inflight + s.delayed for s in app.broker.stats(["default"])) == 0


def test_prefork_chord_fires_exactly_once_across_processes(process_url: str,
                                                           tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    env = worker_env(process_url, ledger, broker_lease_timeout=5, worker_heartbeat_interval=0.5)
    cmd = [sys.executable, "-m", "conveyor", "-A", APP, "worker", "-P", "prefork", "-c", "2",
           "-l", "WARNING"]
    with open(tmp_path / "worker.log", "ab") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    client = Conveyor("canvas-client", broker=process_url, set_as_current=False)
    try:
        header = [_by_name(client, "square", i) for i in range(300)]
        result = chord(header, _by_name(client, "body")).delay()
        assert result.get(timeout=60) == [i * i for i in range(300)]

        broken = [_by_name(client, "square", 1), _by_name(client, "fail", 2),
                  _by_name(client, "fail", 3), _by_name(client, "square", 4)]
        failing = chord(broken, _by_name(client, "body"))
        failing = failing.on_error(_by_name(client, "on_error"))
        with pytest.raises(ValueError, match="failed"):
            failing.delay().get(timeout=60)

        killed = chord([_by_name(client, "square", 5), _by_name(client, "hang", 6)],
                       _by_name(client, "body")).on_error(_by_name(client, "on_error"))
        with pytest.raises(TimeLimitExceeded):
            killed.delay().get(timeout=60)
        wait_for(lambda: _drained(client), 30, "the queue to drain")
    finally:
        stop(proc)
        client.close()
    lines = [line.split() for line in ledger.read_text().splitlines()]
    assert [line[2] for line in lines if line[0] == "body"] == ["300"]
    assert len([line for line in lines if line[0] == "errback"]) == 2  # one per failed chord
    assert len({line[1] for line in lines if line[0] == "header"}) == 2  # both children joined

