"""Worker semantics through the real path (encode, broker, reserve, run, settle).

These run a threads-pool worker in-process on every backend; the
process-level guarantees (kills, leases, hard limits) are in
test_worker_processes.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from conveyor import Conveyor, states
from conveyor.brokers import Envelope
from conveyor.exceptions import (
    MaxRetriesExceededError,
    Reject,
    SoftTimeLimitExceeded,
    TaskRevokedError,
)
from conveyor.testing import run_worker

CALLS: dict[str, list[float]] = {}


@pytest.fixture
def app(app_urls: tuple[str, str]) -> Iterator[Conveyor]:
    CALLS.clear()
    broker, backend = app_urls
    application = Conveyor("semantics", broker=broker, backend=backend,
                           set_as_current=False)
    yield application
    application.close()


def note(name: str) -> None:
    CALLS.setdefault(name, []).append(time.monotonic())


def test_success_and_result_fields(app: Conveyor) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with run_worker(app):
        result = add.delay(2, 3)
        assert result.get(timeout=10) == 5
    assert result.state == states.SUCCESS and result.successful()
    assert result.name == add.name


def test_explicit_retry_waits_in_the_broker_and_keeps_the_task_id(app: Conveyor) -> None:
    @app.task(bind=True, max_retries=2)
    def flaky(self: object) -> int:
        note("flaky")
        request = flaky.request
        if request.retries < 2:
            raise flaky.retry(countdown=0.5)
        return request.retries

    with run_worker(app):
        result = flaky.delay()
        assert result.get(timeout=15) == 2
    gaps = [b - a for a, b in zip(CALLS["flaky"], CALLS["flaky"][1:], strict=False)]
    assert len(gaps) == 2
    assert all(0.45 <= g < 1.6 for g in gaps), gaps  # due within 1 s of its time


def test_exhausted_retries_reraise_the_original_error(app: Conveyor) -> None:
    @app.task(bind=True, max_retries=1, default_retry_delay=0.1)
    def always_fails(self: object) -> None:
        try:
            raise ValueError("upstream said no")
        except ValueError as exc:
            raise always_fails.retry(exc=exc) from exc

    with run_worker(app):
        result = always_fails.delay()
        with pytest.raises(ValueError, match="upstream said no"):
            result.get(timeout=10)
    assert result.retries == 1
    assert "ValueError" in (result.traceback or "")


def test_retry_without_exception_raises_max_retries_exceeded(app: Conveyor) -> None:
    @app.task(bind=True, max_retries=0)
    def no_retries(self: object) -> None:
        raise no_retries.retry(countdown=0)

    with run_worker(app):
        result = no_retries.delay()
        with pytest.raises(MaxRetriesExceededError, match="max_retries=0"):
            result.get(timeout=10)


def test_autoretry_with_backoff_and_cap(app: Conveyor) -> None:
    @app.task(autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 3},
              retry_backoff=0.2, retry_backoff_max=0.5, retry_jitter=False)
    def fetch() -> str:
        note("fetch")
        if len(CALLS["fetch"]) < 4:
            raise ConnectionError("network blip")
        return "ok"

    with run_worker(app):
        assert fetch.delay().get(timeout=15) == "ok"
    times = CALLS["fetch"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.2 * 2**n capped at 0.5: 0.2, 0.4, 0.5
    for gap, expected in zip(gaps, [0.2, 0.4, 0.5], strict=True):
        assert expected - 0.05 <= gap < expected + 1.0, gaps


def test_autoretry_ignores_other_errors(app: Conveyor) -> None:
    @app.task(autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 3})
    def broken() -> None:
        note("broken")
        raise KeyError("not retryable")

    with run_worker(app), pytest.raises(KeyError):
        broken.delay().get(timeout=10)
    assert len(CALLS["broken"]) == 1


def test_reject_dead_letters_with_reason(app: Conveyor) -> None:
    @app.task
    def refuse() -> None:
        raise Reject("bad payload", requeue=False)

    with run_worker(app) as worker:
        result = refuse.delay()
        worker.join()
    assert result.state == states.FAILURE
    [letter] = app.broker.dead_letters("default")
    assert "rejected by the task: bad payload" in letter.reason


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "undecodable message: body is not JSON"),
    (b"\xff\xfe\x00", "undecodable message: body is not UTF-8"),
    (b'{"id": "x1", "task": "nobody.registered", "v": 1}', "unknown task 'nobody.registered'"),
    (b'{"id": "x2", "task": "t", "content_type": "application/x-python-serialize"}',
     "content type refused"),
    (b'[1, 2]', "undecodable message: body is a JSON list"),
])
def test_bad_messages_are_dead_lettered_and_the_worker_goes_on(
        app: Conveyor, body: bytes, reason: str) -> None:
    @app.task
    def fine() -> str:
        return "still working"

    app.broker.enqueue(Envelope(id="bad-1", queue="default", body=body))
    with run_worker(app) as worker:
        assert fine.delay().get(timeout=10) == "still working"
        worker.join()
    [letter] = app.broker.dead_letters("default")
    assert reason in letter.reason
    assert letter.body == body


def test_expired_messages_are_not_run(app: Conveyor) -> None:
    @app.task
    def late() -> None:
        note("late")

    result = late.apply_async(expires=0.01)
    time.sleep(0.05)  # let the expiry pass before any worker exists
    with run_worker(app) as worker:
        worker.join()
    assert result.state == states.REVOKED
    assert "late" not in CALLS


def test_revoked_before_running_is_skipped_even_by_a_later_worker(app: Conveyor) -> None:
    @app.task
    def doomed() -> None:
        note("doomed")

    result = doomed.delay()
    result.revoke()
    with run_worker(app) as worker:
        worker.join()
    assert result.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=1)
    assert "doomed" not in CALLS


def test_soft_time_limit_raises_inside_the_task(app: Conveyor) -> None:
    @app.task(soft_time_limit=0.3)
    def slow() -> str:
        try:
            for _ in range(100):
                time.sleep(0.05)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "finished"

    with run_worker(app):
        assert slow.delay().get(timeout=10) == "cleaned up"


def test_progress_is_visible_while_running(app: Conveyor) -> None:
    import threading

    gate = threading.Event()

    @app.task(bind=True)
    def crunch(self: object) -> int:
        crunch.update_state(state="PROGRESS", meta={"done": 3, "total": 10})
        gate.wait(10)
        return 10

    with run_worker(app):
        result = crunch.delay()
        deadline = time.monotonic() + 10
        while result.state != "PROGRESS":
            assert time.monotonic() < deadline, result.state
            time.sleep(0.01)
        assert result.info == {"done": 3, "total": 10}
        gate.set()
        assert result.get(timeout=10) == 10


def test_async_tasks_run_natively(app: Conveyor) -> None:
    import asyncio

    @app.task
    async def fetch_twice(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 2

    with run_worker(app, pool="async"):
        assert fetch_twice.delay(21).get(timeout=10) == 42
    with run_worker(app, pool="threads"):
        assert fetch_twice.delay(4).get(timeout=10) == 8


def test_routes_and_per_call_queue(app: Conveyor) -> None:
    app.conf.update({"task_routes": {"reports.*": {"queue": "reports"}}})
    app._invalidate()

    @app.task(name="reports.build")
    def build() -> str:
        return "report"

    result = build.delay()
    assert app.broker.stats(["reports"])[0].ready == 1
    with run_worker(app, queues=["reports"]):
        assert result.get(timeout=10) == "report"
    explicit = build.apply_async(queue="urgent")
    assert app.broker.stats(["urgent"])[0].ready == 1
    assert explicit.state == states.PENDING


def test_thread_pool_acknowledges_finished_tasks_in_bunches(app: Conveyor) -> None:
    """Consumer threads hand finished messages to the supervisor thread, which
    acknowledges several per call: all leave the broker, in fewer calls."""
    calls: list[int] = []
    broker = app.broker
    real_ack = broker.ack

    def counting_ack(deliveries: list[object]) -> list[bool]:
        calls.append(len(deliveries))
        return real_ack(deliveries)  # type: ignore[arg-type]

    broker.ack = counting_ack  # type: ignore[method-assign,assignment]

    @app.task
    def noop(i: int) -> int:
        return i

    results = [noop.delay(i) for i in range(40)]
    with run_worker(app, concurrency=2):
        assert [r.get(timeout=10) for r in results] == list(range(40))
        deadline = time.monotonic() + 10
        while sum(calls) < 40:
            assert time.monotonic() < deadline, f"only {sum(calls)} of 40 acknowledged"
            time.sleep(0.01)
    [stats] = broker.stats([app.conf.task_default_queue])
    assert (stats.ready, stats.inflight) == (0, 0)
    assert sum(calls) == 40 and len(calls) < 40, calls
