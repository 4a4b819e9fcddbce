"""Celery's task and publish signals from the real worker path, on every store.

A threads-pool worker runs in-process (encode, broker, reserve, run, settle);
receivers record what they were sent.  The same signals from real worker
processes (prefork and threads) are in test_signal_processes.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from conveyor import Conveyor, signals, states
from conveyor._dispatch import Signal
from conveyor.brokers import Envelope
from conveyor.einfo import ExceptionInfo
from conveyor.testing import run_worker

Seen = list[tuple[str, Any, dict[str, Any]]]


@pytest.fixture
def app(backend_url: str) -> Iterator[Conveyor]:
    application = Conveyor("sigs", broker=backend_url, backend=backend_url,
                           set_as_current=False)
    yield application
    application.close()


@pytest.fixture
def listen() -> Iterator[Callable[..., Seen]]:
    """``listen(signal, ..., sender=None)``: record every send; disconnected after."""
    connected: list[tuple[Signal, Any, Any]] = []
    seen: Seen = []

    def _listen(*sigs: Signal, sender: Any = None) -> Seen:
        for sig in sigs:
            def receiver(sender: Any = None, _name: str = sig.name, **kw: Any) -> None:
                kw.pop("signal")
                seen.append((_name, sender, kw))
            sig.connect(receiver, sender=sender, weak=False)
            connected.append((sig, receiver, sender))
        return seen

    yield _listen
    for sig, receiver, sender in connected:
        sig.disconnect(receiver, sender=sender)


def named(seen: Seen, name: str) -> list[tuple[Any, dict[str, Any]]]:
    return [(sender, kw) for n, sender, kw in seen if n == name]


@pytest.mark.parametrize("pool", ["threads", "async", "solo"])
def test_success_sends_received_prerun_success_postrun_with_celery_arguments(
        app: Conveyor, listen: Callable[..., Seen], pool: str) -> None:
    """Celery: app/trace.py sends task_prerun(sender=task, task_id, task, args, kwargs)
    before the run, task_success(sender=task, result) and task_postrun(..., retval, state)
    after it; worker/strategy.py sends task_received(sender=consumer, request).  On every
    pool (prefork: test_signal_processes.py), ``async def`` tasks on the async one."""
    if pool == "async":
        @app.task
        async def add(a: int, b: int = 0) -> int:
            return a + b
    else:
        @app.task
        def add(a: int, b: int = 0) -> int:
            return a + b

    request_ids: list[str | None] = []

    def sees_request(sender: Any = None, **kw: Any) -> None:
        request_ids.append(sender.request.id)

    signals.task_prerun.connect(sees_request, sender=add, weak=False)
    seen = listen(signals.task_received, signals.task_prerun, signals.task_success,
                  signals.task_postrun)
    try:
        with run_worker(app, pool=pool) as worker:
            result = add.delay(2, b=3)
            assert result.get(timeout=10) == 5
            worker.join()
    finally:
        signals.task_prerun.disconnect(sees_request, sender=add)
    assert [n for n, _, _ in seen] == ["task_received", "task_prerun", "task_success",
                                       "task_postrun"]
    [(consumer, received)] = named(seen, "task_received")
    assert consumer.app is app and received["request"].id == result.id
    [(sender, prerun)] = named(seen, "task_prerun")
    assert sender is add and prerun == {"task_id": result.id, "task": add, "args": (2,),
                                        "kwargs": {"b": 3}}
    assert named(seen, "task_success") == [(add, {"result": 5})]
    [(_, postrun)] = named(seen, "task_postrun")
    assert postrun["retval"] == 5 and postrun["state"] == states.SUCCESS
    assert request_ids == [result.id]  # task.request is set during task_prerun


def test_failure_sends_task_failure_with_exception_traceback_and_einfo(
        app: Conveyor, listen: Callable[..., Seen]) -> None:
    """Celery: trace.py handle_failure sends task_failure(sender=task, task_id, exception,
    args, kwargs, traceback, einfo) after the FAILURE is stored."""
    @app.task
    def boom(x: int) -> None:
        raise ValueError(f"bad {x}")

    seen = listen(signals.task_failure, signals.task_postrun, sender=boom)
    with run_worker(app) as worker:
        result = boom.delay(7)
        worker.join()
    assert result.state == states.FAILURE
    [(sender, failure)] = named(seen, "task_failure")
    assert sender is boom and failure["task_id"] == result.id
    assert isinstance(failure["exception"], ValueError) and failure["args"] == (7,)
    assert failure["traceback"] is failure["exception"].__traceback__
    einfo = failure["einfo"]
    assert isinstance(einfo, ExceptionInfo) and einfo.exception is failure["exception"]
    assert "ValueError: bad 7" in einfo.traceback
    [(_, postrun)] = named(seen, "task_postrun")
    assert postrun["state"] == states.FAILURE and postrun["retval"] is failure["exception"]


def test_retry_sends_task_retry_with_request_reason_and_einfo(
        app: Conveyor, listen: Callable[..., Seen]) -> None:
    """Celery: trace.py handle_retry sends task_retry(sender=task, request, reason, einfo);
    autoretry_for goes through the same path."""
    @app.task(bind=True, max_retries=1, default_retry_delay=0)
    def again(self: Any) -> int:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return 1

    @app.task(autoretry_for=(KeyError,), retry_kwargs={"max_retries": 1, "countdown": 0})
    def auto() -> None:
        raise KeyError("always")

    seen = listen(signals.task_retry)
    with run_worker(app) as worker:
        first, second = again.delay(), auto.delay()
        assert first.get(timeout=10) == 1
        worker.join()
    retries = named(seen, "task_retry")
    assert [s for s, _ in retries] == [again, auto] or [s for s, _ in retries] == [auto, again]
    for sender, kw in retries:
        assert kw["request"].id == (first.id if sender is again else second.id)
        assert type(kw["reason"]).__name__ == "Retry"
        assert kw["einfo"].exception is kw["reason"]
    assert second.state == states.FAILURE


def test_revoked_and_expired_send_task_revoked(app: Conveyor,
                                               listen: Callable[..., Seen]) -> None:
    """Celery: worker/request.py sends task_revoked(sender=task, request, terminated,
    signum, expired) for revoked and expired messages; strategy.py sends no task_received
    for them."""
    @app.task
    def work() -> None:
        pass

    revoked = work.delay()
    app.revoke(revoked.id)
    expired = work.apply_async(expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    seen = listen(signals.task_revoked, signals.task_prerun, signals.task_received)
    with run_worker(app) as worker:
        worker.join()
    by_id = {kw["request"].id: (sender, kw) for sender, kw in named(seen, "task_revoked")}
    assert by_id[revoked.id][0] is work
    assert {k: v for k, v in by_id[revoked.id][1].items() if k != "request"} == {
        "terminated": False, "signum": None, "expired": False}
    assert by_id[expired.id][1]["expired"] is True
    assert named(seen, "task_prerun") == named(seen, "task_received") == []  # neither ran


def test_unknown_task_and_undecodable_body_send_task_unknown_and_task_rejected(
        app: Conveyor, listen: Callable[..., Seen]) -> None:
    """Celery: consumer.py sends task_unknown(sender=consumer, message, exc, name, id) for
    an unregistered name and task_rejected(sender=consumer, message, exc) for a message
    that is no task; both are dead-lettered here (Celery rejects them)."""
    seen = listen(signals.task_unknown, signals.task_rejected)
    unknown = app.send_task("nobody.knows", [1])
    app.broker.enqueue(Envelope("garbage-1", "default", b"\x00not json"))
    with run_worker(app) as worker:
        worker.join()
    [(consumer, kw)] = named(seen, "task_unknown")
    assert consumer.app is app and kw["name"] == "nobody.knows" and kw["id"] == unknown.id
    assert isinstance(kw["exc"], KeyError) and kw["message"].id == unknown.id
    [(_, rejected)] = named(seen, "task_rejected")
    assert rejected["message"].id == "garbage-1" and rejected["exc"] is not None
    assert {d.id for d in app.broker.dead_letters("default")} >= {"garbage-1"}


def test_raising_receivers_lose_no_task(app: Conveyor, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    """Celery: Signal.send logs a receiver's error; the task still runs and is stored."""
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    def broken(**kw: Any) -> None:
        raise RuntimeError("receiver broke")

    sigs = (signals.task_received, signals.task_prerun, signals.task_success,
            signals.task_postrun, signals.before_task_publish, signals.after_task_publish)
    for sig in sigs:
        sig.connect(broken)
    try:
        with run_worker(app) as worker:
            results = [add.delay(i, i) for i in range(5)]
            assert [r.get(timeout=10) for r in results] == [0, 2, 4, 6, 8]
            worker.join()
    finally:
        for sig in sigs:
            sig.disconnect(broken)
    assert "receiver broke" in caplog.text
    assert app.broker.dead_letters("default") == []


def test_internal_error_sends_task_internal_error(
        app: Conveyor, listen: Callable[..., Seen], monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery: trace.py sends task_internal_error(sender=task, task_id, args, kwargs,
    request, exception, traceback, einfo) for an error outside the task's body."""
    @app.task
    def fine(x: int) -> int:
        return x

    def fails(*a: Any, **kw: Any) -> None:
        raise RuntimeError("follow-up machinery broke")

    monkeypatch.setattr("conveyor.worker.execute.workflow.on_success", fails)
    seen = listen(signals.task_internal_error)
    with run_worker(app) as worker:
        result = fine.delay(4)
        worker.join()
    [(sender, kw)] = named(seen, "task_internal_error")
    assert sender is fine and kw["task_id"] == result.id and kw["args"] == (4,)
    assert str(kw["exception"]) == "follow-up machinery broke"
    assert kw["request"].id == result.id and kw["einfo"].internal


def test_publish_signals_with_celery_headers_and_added_headers_travel(
        app: Conveyor, listen: Callable[..., Seen]) -> None:
    """Celery: amqp.py send_task_message sends before_task_publish(sender=name, body,
    exchange, routing_key, headers, properties, declare, retry_policy) and
    after_task_publish(sender=name, body, exchange, routing_key); a header a receiver
    adds reaches the worker (tracing integrations rely on it)."""
    @app.task(bind=True)
    def traced(self: Any, x: int) -> Any:
        return self.request.headers.get("trace")

    def inject(headers: dict[str, Any], **kw: Any) -> None:
        headers["trace"] = f"span-of-{headers['id']}"

    signals.before_task_publish.connect(inject, sender=traced.name, weak=False)
    seen = listen(signals.before_task_publish, signals.after_task_publish)
    try:
        with run_worker(app) as worker:
            result = traced.apply_async((1,), queue="default", countdown=0)
            assert result.get(timeout=10) == f"span-of-{result.id}"
            many = app.send_many(traced.name, [(2,), (3,)])
            worker.join()
    finally:
        signals.before_task_publish.disconnect(inject, sender=traced.name)
    before = named(seen, "before_task_publish")
    assert [s for s, _ in before] == [traced.name] * 3
    first = before[0][1]
    assert first["headers"]["id"] == result.id and first["headers"]["task"] == traced.name
    assert first["body"][0] == [1] and first["routing_key"] == "default"
    assert first["exchange"] == "" and first["retry_policy"] is None
    assert first["properties"]["correlation_id"] == result.id
    after = named(seen, "after_task_publish")
    assert [kw["headers"]["id"] for _, kw in after] == [result.id, *(r.id for r in many)]
    assert [r.get(timeout=10) for r in many] == [f"span-of-{r.id}" for r in many]


def test_worker_lifecycle_signals_in_celery_order(app: Conveyor,
                                                  listen: Callable[..., Seen]) -> None:
    """Celery: apps/worker.py celeryd_init(sender=hostname, instance, conf, options), then
    worker_init(sender=worker), import_modules(sender=app), celeryd_after_setup,
    worker_ready, and worker_shutdown(sender=worker) at the end; the solo pool sends
    worker_process_init/worker_process_shutdown in the worker process."""
    seen = listen(signals.celeryd_init, signals.worker_init, signals.import_modules,
                  signals.celeryd_after_setup, signals.worker_ready,
                  signals.worker_process_init, signals.worker_process_shutdown,
                  signals.worker_shutdown)
    with run_worker(app, pool="solo", hostname="node1@%h") as worker:
        pass
    assert [n for n, _, _ in seen] == [
        "celeryd_init", "worker_init", "import_modules", "celeryd_after_setup",
        "worker_ready", "worker_process_init", "worker_process_shutdown", "worker_shutdown"]
    [(hostname, init)] = named(seen, "celeryd_init")
    assert hostname == worker.worker.hostname and hostname.startswith("node1@")
    assert init["instance"] is worker.worker and init["conf"] is app.conf
    assert init["options"]["pool"] == "solo"
    assert named(seen, "worker_init")[0][0] is worker.worker
    assert named(seen, "import_modules")[0][0] is app
    assert named(seen, "worker_process_shutdown")[0][1]["exitcode"] == 0
