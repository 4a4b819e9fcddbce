"""Eager mode: ``Task.apply()``, ``task_always_eager`` and friends, run in-process.

Eager mode runs the task in the calling process on purpose, so these tests
call it directly; what they check against is the worker path (the same
encoding, hooks, retries and workflow rules).
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from conveyor import AsyncResult, Conveyor, Task, chain, chord, group, states
from conveyor._config import Settings
from conveyor._eager import EagerResult
from conveyor.exceptions import SerializationError

calls: list[Any] = []


@pytest.fixture
def app(memory_url: str) -> Iterator[Conveyor]:
    calls.clear()
    application = Conveyor("eager", broker=memory_url, set_as_current=False)
    yield application
    application.close()


@pytest.fixture
def eager(app: Conveyor) -> Conveyor:
    app.config_from_object({"CELERY_TASK_ALWAYS_EAGER": True}, namespace="CELERY")
    return app


def queued(app: Conveyor) -> int:
    return sum(s.ready + s.delayed + s.inflight for s in app.broker.stats(["default"]))


def test_apply_returns_an_eager_result_with_celerys_api(app: Conveyor) -> None:
    """Celery: app/task.py Task.apply runs the task locally and returns an EagerResult
    (result.py: get(propagate=), state/status, result, successful(), failed(), ready(),
    traceback, id)."""
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise ValueError("no good")

    from conveyor.result import EagerResult as CeleryPath  # celery.result.EagerResult

    ok = add.apply((2, 3), task_id="chosen-id")
    assert CeleryPath is EagerResult
    assert isinstance(ok, EagerResult) and isinstance(ok, AsyncResult)
    assert (ok.id, ok.get(), ok.result, ok.state, ok.status) == (
        "chosen-id", 5, 5, states.SUCCESS, states.SUCCESS)
    assert ok.successful() and ok.ready() and not ok.failed() and ok.traceback is None
    bad = fail.apply()
    assert bad.state == states.FAILURE and bad.failed() and bad.ready()
    assert isinstance(bad.result, ValueError) and "ValueError: no good" in str(bad.traceback)
    assert bad.get(propagate=False) is bad.result
    with pytest.raises(ValueError, match="no good"):
        bad.get()
    assert queued(app) == 0, "nothing went through the broker"


def test_delay_runs_inline_under_task_always_eager(eager: Conveyor) -> None:
    """Celery: app/task.py apply_async under task_always_eager calls apply();
    the request says is_eager (Context.is_eager, delivery_info['is_eager'])."""
    seen: dict[str, Any] = {}

    @eager.task(bind=True)
    def look(self: Task, x: int) -> int:
        request = self.request
        seen.update(id=request.id, args=request.args, eager=request.is_eager,
                    direct=request.called_directly, info=request.delivery_info)
        return x * 2

    result = look.delay(21)
    assert result.get() == 42 and seen["id"] == result.id and seen["args"] == (21,)
    assert seen["eager"] and not seen["direct"] and seen["info"]["is_eager"]
    assert queued(eager) == 0
    eager.conf.task_always_eager = False  # set as an attribute, as Celery code does
    look.delay(1)
    assert queued(eager) == 1, "sent to the broker once eager mode is off"


@pytest.mark.parametrize("always_eager", [True, False])
def test_a_refused_argument_fails_the_same_with_or_without_eager(app: Conveyor,
                                                                 always_eager: bool) -> None:
    """Different on purpose from Celery (whose Task.apply skips serialization): an eager
    call is encoded as the broker path would, so a test cannot pass with an argument
    that production refuses."""
    app.conf.update({"task_always_eager": always_eager, "task_message_max_bytes": 10_000})

    @app.task
    def take(value: Any) -> None:
        calls.append(value)

    with pytest.raises(SerializationError, match="positional argument 0"):
        take.delay(object())
    with pytest.raises(SerializationError, match="JSON objects only have string keys"):
        take.delay({1: "one"})
    with pytest.raises(SerializationError, match="task_message_max_bytes=10000"):
        take.delay("x" * 20_000)
    with pytest.raises(SerializationError, match="positional argument 0"):
        take.apply((object(),))
    assert calls == [] and queued(app) == 0


def test_the_task_gets_what_a_worker_would(eager: Conveyor) -> None:
    """Arguments arrive decoded (new objects, tagged types restored) and the value comes
    back as the result store would give it; a value the store refuses fails the run."""
    original = [1, 2]
    when = datetime(2030, 1, 2, tzinfo=timezone.utc)

    @eager.task
    def inspect_args(items: list[int], moment: datetime, pair: tuple[int, int]) -> Any:
        items.append(3)
        calls.append((moment, pair))
        return {"items": items, "tags": {"a", "b"}}

    @eager.task
    def unstorable() -> object:
        return object()

    value = inspect_args.delay(original, when, (4, 5)).get()
    assert original == [1, 2], "the task had its own decoded copy"
    assert calls == [(when, (4, 5))]
    assert value == {"items": [1, 2, 3], "tags": {"a", "b"}}
    failed = unstorable.delay()
    assert failed.state == states.FAILURE and isinstance(failed.result, SerializationError)


def test_task_eager_propagates_and_throw(app: Conveyor) -> None:
    """Celery: Task.apply(throw=) defaults to task_eager_propagates.  Different on purpose:
    Celery skips on_failure when propagating (celery/celery#3728); here the hooks run,
    then the error is raised."""
    class Hooked(app.Task):
        def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                       einfo: Any) -> None:
            calls.append(("on_failure", type(exc).__name__, einfo.type.__name__))

    @app.task(base=Hooked)
    def fail() -> None:
        raise KeyError("k")

    app.conf.update({"task_always_eager": True, "task_eager_propagates": True})
    with pytest.raises(KeyError):
        fail.delay()
    assert calls == [("on_failure", "KeyError", "KeyError")]
    assert fail.apply(throw=False).state == states.FAILURE
    app.conf.task_eager_propagates = False
    with pytest.raises(KeyError):
        fail.apply(throw=True)


def test_retries_run_again_at_once(eager: Conveyor) -> None:
    """Celery: Task.retry under is_eager and Task.apply re-run the retry signature eagerly
    (retval.sig.apply(retries=retries + 1)); max_retries and autoretry_for apply."""
    @eager.task(bind=True, max_retries=5)
    def flaky(self: Task, until: int, note: str = "first") -> tuple[int, str]:
        calls.append((self.request.retries, note))
        if self.request.retries < until:
            raise self.retry(args=(until,), kwargs={"note": "again"}, countdown=600)
        return self.request.retries, note

    @eager.task(autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 2})
    def always_down() -> None:
        calls.append("down")
        raise ConnectionError("down")

    started = time.monotonic()
    assert flaky.delay(2).get() == (2, "again")
    assert time.monotonic() - started < 5, "countdown is not waited for"
    assert calls == [(0, "first"), (1, "again"), (2, "again")]
    calls.clear()
    exhausted = flaky.apply((9,))
    assert exhausted.state == states.FAILURE and len(calls) == 6  # first run + 5 retries
    calls.clear()
    down = always_down.delay()
    assert calls == ["down"] * 3 and isinstance(down.result, ConnectionError)


def test_hooks_run_as_in_a_worker(eager: Conveyor) -> None:
    """Celery: app/trace.py calls the same hooks for eager runs (build_tracer eager=True)."""
    class Hooked(eager.Task):
        def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(("before_start", task_id, args))

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(("on_success", task_id, retval))

        def on_retry(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            calls.append(("on_retry", type(exc).__name__, einfo.type.__name__))

        def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any,
                         einfo: Any) -> None:
            calls.append(("after_return", status, retval))

    @eager.task(base=Hooked, bind=True)
    def once_more(self: Task) -> int:
        if not self.request.retries:
            raise self.retry(exc=OSError("flaky"))
        return 7

    result = once_more.delay()
    tid = result.id
    assert calls == [("before_start", tid, ()), ("on_retry", "OSError", "Retry"),
                     ("before_start", tid, ()), ("on_success", tid, 7),
                     ("after_return", states.SUCCESS, 7)]


def test_task_store_eager_result_writes_the_result_store(app: Conveyor) -> None:
    """Celery: task_store_eager_result makes eager runs store their results
    (app/trace.py: publish_result when eager and store_eager_result)."""
    @app.task
    def triple(x: int) -> int:
        return 3 * x

    @app.task
    def fail() -> None:
        raise ValueError("stored too")

    app.conf.update({"task_always_eager": True})
    unstored = triple.delay(1)
    assert app.AsyncResult(unstored.id).state == states.PENDING
    app.conf.task_store_eager_result = True
    stored = triple.delay(2)
    assert app.AsyncResult(stored.id).get(timeout=1) == 6
    failed = fail.delay()
    with pytest.raises(ValueError, match="stored too"):
        app.AsyncResult(failed.id).get(timeout=1)


def test_link_and_link_error_follow_inline(eager: Conveyor) -> None:
    """Celery: callbacks of an eager run are applied with its value; errbacks with the
    failed task's id (backends/base.py _call_task_errbacks, old-style signature)."""
    @eager.task
    def add(x: int, y: int) -> int:
        return x + y

    @eager.task
    def fail() -> None:
        raise ValueError("x")

    @eager.task
    def record(value: Any) -> None:
        calls.append(value)

    add.apply_async((1, 2), link=record.s())
    failed = fail.apply_async(link_error=record.s())
    assert calls == [3, failed.id]


def test_canvases_run_inline_in_order(eager: Conveyor) -> None:
    """Celery: chain/group/chord apply_async under task_always_eager call apply(), which
    runs the steps in order (canvas.py _chain.apply, group.apply, chord.apply)."""
    @eager.task
    def mul(x: int, y: int) -> int:
        calls.append(("mul", x, y))
        return x * y

    @eager.task
    def total(values: list[int]) -> int:
        return sum(values)

    assert chain(mul.s(2, 3), mul.s(10)).apply_async().get() == 60
    assert (mul.s(1, 2) | mul.s(3) | mul.s(4)).delay().get() == 24
    assert group(mul.s(i, i) for i in range(4)).apply_async().get() == [0, 1, 4, 9]
    assert chord([mul.s(i, 2) for i in range(3)], total.s()).apply_async().get() == 6
    nested = chain(mul.s(1, 1), group(mul.s(2), mul.s(3)), total.s())
    assert nested.apply_async().get() == 5
    final = chain(mul.s(5, 5), mul.s(2)).apply_async()
    assert final.parent is not None and final.parent.get() == 25


def test_canvas_apply_works_without_eager_mode(app: Conveyor) -> None:
    """Celery: Signature.apply / chain.apply / group.apply run locally whatever the setting."""
    @app.task
    def inc(x: int) -> int:
        return x + 1

    assert inc.s(1).apply().get() == 2
    assert chain(inc.s(1), inc.s(), inc.s()).apply().get() == 4
    assert group(inc.s(1), inc.s(2)).apply().get() == [2, 3]
    assert queued(app) == 0


def test_a_failing_step_fails_the_rest_of_the_chain_without_running_it(eager: Conveyor) -> None:
    """As a worker runs a chain (conveyor._workflow.on_failure marks the rest FAILURE);
    Celery's chain.apply raises from the next step's last.get() instead."""
    @eager.task
    def step(x: int) -> int:
        calls.append(x)
        if x == 2:
            raise ValueError("step 2 failed")
        return x + 1

    @eager.task
    def on_error(task_id: str) -> None:
        calls.append(("errback", task_id))

    result = chain(step.s(1), step.s(), step.s()).apply_async(link_error=on_error.s())
    assert result.state == states.FAILURE and isinstance(result.result, ValueError)
    assert result.parent is not None and result.parent.state == states.FAILURE
    assert calls == [1, 2, ("errback", result.parent.id)]
    header_fails = chord([step.s(1), step.s(2)], step.s()).apply_async()
    assert header_fails.state == states.FAILURE


def test_async_tasks_run_eagerly_from_sync_and_async_code(eager: Conveyor) -> None:
    """``async def`` tasks run to completion in eager mode, also when called from a
    running event loop (e.g. an async test)."""
    @eager.task(bind=True)
    async def fetch(self: Task, x: int) -> tuple[int, bool]:
        await asyncio.sleep(0.001)
        return x * 2, self.request.is_eager

    assert fetch.delay(2).get() == (4, True)

    async def caller() -> Any:
        return fetch.delay(5).get()

    assert asyncio.run(caller()) == (10, True)


def test_nested_calls_and_get_inside_an_eager_task(eager: Conveyor) -> None:
    """Celery: an eager task may call other tasks eagerly and read their EagerResult
    (EagerResult.get never blocks)."""
    @eager.task
    def inner(x: int) -> int:
        return x + 1

    @eager.task(bind=True)
    def outer(self: Task, x: int) -> list[Any]:
        child = inner.delay(x)
        both = group(inner.s(x), inner.s(x + 1)).delay()
        return [child.get(), both.get(), self.request.id]

    result = outer.delay(1)
    assert result.get() == [2, [2, 3], result.id]


def test_replace_in_eager_mode_returns_the_replacement_value(eager: Conveyor) -> None:
    """Celery: Task.on_replace under is_eager returns sig.apply().get()."""
    @eager.task
    def mul(x: int, y: int) -> int:
        return x * y

    @eager.task(bind=True)
    def replaced(self: Task, x: int) -> Any:
        return self.replace(chain(mul.s(x, 2), mul.s(5)))

    assert replaced.delay(3).get() == 30


def test_eager_settings_load_without_a_warning() -> None:
    """The three eager settings are honoured now, so none of them is listed as ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Settings().update({"task_always_eager": True, "task_eager_propagates": True,
                           "task_store_eager_result": True})


def test_on_commit_calls_run_when_the_transaction_commits(eager: Conveyor) -> None:
    """Celery: delay_on_commit sends (so, under eager, runs) only on commit; here the
    eager run waits for the caller's open transaction as a send would."""
    from conveyor import signals

    pending: list[Any] = []

    def in_transaction(send: Any) -> bool:
        pending.append(send)
        return True

    @eager.task
    def later(x: int) -> int:
        calls.append(x)
        return x

    signals.add_deferrer(in_transaction)
    try:
        result = later.delay_on_commit(4)
        assert calls == [] and not result.ready()
        for send in pending:  # the transaction commits
            send()
    finally:
        signals.remove_deferrer(in_transaction)
    assert calls == [4] and result.get() == 4


def test_eager_runs_send_celerys_task_signals(eager: Conveyor) -> None:
    """Celery: app/trace.py sends task_prerun, task_success/task_failure/task_retry and
    task_postrun for eager runs too (build_tracer(eager=True))."""
    from conveyor import signals

    @eager.task(bind=True)
    def once(self: Task, fail: bool) -> int:
        if not self.request.retries:
            raise self.retry(exc=OSError("again"))
        if fail:
            raise ValueError("no")
        return 1

    def receiver(signal: Any = None, sender: Any = None, **kwargs: Any) -> None:
        calls.append((signal.name, sender.name, kwargs.get("state")))

    names = ("task_prerun", "task_postrun", "task_success", "task_failure", "task_retry")
    for name in names:
        getattr(signals, name).connect(receiver, weak=False)
    try:
        once.delay(False)
        once.delay(True)
    finally:
        for name in names:
            getattr(signals, name).disconnect(receiver)
    run = [("task_prerun", once.name, None), ("task_retry", once.name, None),
           ("task_postrun", once.name, states.RETRY), ("task_prerun", once.name, None)]
    assert calls == [*run, ("task_success", once.name, None),
                     ("task_postrun", once.name, states.SUCCESS),
                     *run, ("task_failure", once.name, None),
                     ("task_postrun", once.name, states.FAILURE)]


def test_current_style_errbacks_are_called_in_eager_runs(eager: Conveyor) -> None:
    """Celery: backends/base.py _call_task_errbacks calls an errback taking more than one
    argument as errback(request, exc, traceback)."""
    @eager.task
    def fail() -> None:
        raise KeyError("gone")

    @eager.task
    def on_error(request: Any, exc: BaseException, traceback: str) -> None:
        calls.append((request.id, type(exc).__name__, "KeyError" in traceback))

    failed = fail.apply_async(link_error=on_error.s())
    assert calls == [(failed.id, "KeyError", True)]
