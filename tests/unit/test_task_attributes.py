"""Task classes and task attributes: what ``@app.task(base=...)``, ``app.Task``,
``register_task`` and the option attributes give, checked without a worker.

What the hooks do in workers is in tests/integration/test_task_classes.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, Task, shared_task, states
from conveyor.exceptions import ConfigurationError
from conveyor.task import NO_EFFECT_TASK_OPTIONS
from conveyor.testing import run_worker


@pytest.fixture
def app(memory_url: str) -> Iterator[Conveyor]:
    application = Conveyor("attrs", broker=memory_url, set_as_current=False)
    yield application
    application.close()


def test_every_option_reads_back_with_celerys_defaults_from_settings(app: Conveyor) -> None:
    """Celery: app/task.py Task.from_config - serializer, rate_limit, priority, time limits,
    track_started, acks_late, ignore_result, store_eager_result, reject_on_worker_lost and
    acks_on_failure_or_timeout default from their settings; max_retries 3,
    default_retry_delay 180."""
    @app.task
    def plain() -> None: ...

    assert (plain.name, plain.max_retries, plain.default_retry_delay) == (
        "tests.unit.test_task_attributes.plain", 3, 180.0)
    assert (plain.serializer, plain.rate_limit, plain.priority, plain.time_limit,
            plain.soft_time_limit, plain.track_started, plain.acks_late, plain.ignore_result,
            plain.store_eager_result) == ("json", None, None, None, None, False, True, False,
                                          False)
    assert (plain.queue, plain.expires, plain.autoretry_for, plain.retry_backoff,
            plain.retry_backoff_max, plain.retry_jitter, plain.typing) == (
        None, None, (), False, 600.0, True, True)
    assert (plain.delivery_mode, plain.exchange, plain.routing_key) == (None, None, None)
    assert plain.reject_on_worker_lost is True and plain.acks_on_failure_or_timeout is True
    app.conf.update({
        "task_serializer": "pickle", "task_default_rate_limit": "10/s",
        "task_time_limit": 60.0, "task_soft_time_limit": 50.0, "task_track_started": True,
        "task_acks_late": False, "task_ignore_result": True, "task_default_priority": 3,
        "task_store_eager_result": True, "task_reject_on_worker_lost": False,
    })
    assert (plain.serializer, plain.rate_limit, plain.time_limit, plain.soft_time_limit,
            plain.track_started, plain.acks_late, plain.ignore_result, plain.priority,
            plain.store_eager_result, plain.reject_on_worker_lost) == (
        "pickle", "10/s", 60.0, 50.0, True, False, True, 3, True, False)


def test_decorator_values_win_and_attributes_can_be_assigned(app: Conveyor) -> None:
    """Celery: decorator options become task attributes; code (tests especially)
    assigns them, e.g. ``task.max_retries = 0``."""
    @app.task(serializer="json", queue="orders", max_retries=7, priority=5, rate_limit="2/s",
              track_started=True, acks_late=False, expires=30.0)
    def configured() -> None: ...

    assert (configured.queue, configured.max_retries, configured.priority,
            configured.rate_limit, configured.track_started, configured.acks_late,
            configured.expires) == ("orders", 7, 5, "2/s", True, False, 30.0)
    configured.max_retries = 0
    assert configured.max_retries == 0 and configured.options.max_retries == 0
    with pytest.raises(ConfigurationError, match=r"priority must be 0\.\.9"):
        configured.priority = 12


def test_base_class_attributes_helpers_and_hooks_reach_the_task(app: Conveyor) -> None:
    """Celery: app/base.py _task_from_fun builds the task from ``base`` (default
    app.Task); class attributes are defaults the decorator's options override, and the
    class's own __init__ runs (without arguments)."""
    class Base(app.Task):
        max_retries = 9
        autoretry_for = (ConnectionError,)
        retry_backoff = True
        greeting = "hi"

        def __init__(self) -> None:
            super().__init__()
            self.inits = getattr(self, "inits", 0) + 1

        def greet(self) -> str:
            return f"{self.greeting} from {self.name}"

    @app.task(base=Base, bind=True, max_retries=2)
    def bound(self: Base) -> str:
        return self.greet()

    @shared_task(base=Base)
    def shared() -> None: ...

    assert isinstance(bound, Base) and isinstance(bound, app.Task) and isinstance(bound, Task)
    assert bound.inits == 1
    assert bound.max_retries == 2 and shared.max_retries == 9, "decorator > class > setting"
    assert bound.autoretry_for == (ConnectionError,) and bound.retry_backoff is True
    assert Base.max_retries == 9 and Task.max_retries == 3, "read on the class, as in Celery"
    assert bound() == "hi from tests.unit.test_task_attributes.bound"
    with run_worker(app):
        assert bound.delay().get(timeout=10) == "hi from tests.unit.test_task_attributes.bound"
    assert bound.with_options(queue="x").greet().startswith("hi"), "copies keep the class"

    class RoutedMixin:  # not a task class: its options still count
        queue = "mixed-in"

    @app.task(base=type("Mixed", (RoutedMixin, Base), {}))
    def mixed() -> None: ...

    assert mixed.queue == "mixed-in" and mixed.options.queue == "mixed-in"


def test_class_based_tasks_register_and_run_through_a_worker(app: Conveyor) -> None:
    """Celery: app/base.py register_task - an instance (or class) with run(); unnamed
    classes are named module.ClassName; the task belongs to the app."""
    class Square(app.Task):
        def run(self, x: int) -> int:
            return x * x

    class Named(Task):
        name = "custom.named"
        queue = "default"

        def run(self, x: int) -> str:
            return f"{self.name}:{x}"

    square = app.register_task(Square)
    named = app.register_task(Named())
    assert square.name == "tests.unit.test_task_attributes.Square"
    assert app.tasks[square.name] is square and app.tasks["custom.named"] is named
    assert square(3) == 9 and square.run(4) == 16
    with run_worker(app):
        assert square.delay(5).get(timeout=10) == 25
        assert app.send_task("custom.named", [1]).get(timeout=10) == "custom.named:1"
    with pytest.raises(TypeError, match="has no run\\(\\) method"):
        Task()

    class Unregistered(Task):
        def run(self) -> None: ...

    with pytest.raises(ConfigurationError, match="Unregistered has no name"):
        Unregistered().delay()


def test_app_task_cls_sets_the_default_base(memory_url: str) -> None:
    """Celery: Celery(task_cls=...) is the default base of @app.task."""
    class Audited(Task):
        audited = True

    app = Conveyor("cls", broker=memory_url, task_cls=Audited, set_as_current=False)

    @app.task
    def anything() -> None: ...

    assert isinstance(anything, Audited) and anything.audited


def test_a_base_that_is_not_a_task_class_is_refused(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match=r"base=.* is not a task class"):
        app.task(base=dict)(lambda: None)


def test_ack_options_are_task_options_with_their_settings_as_defaults(app: Conveyor) -> None:
    """Celery: app/task.py - acks_on_failure_or_timeout and reject_on_worker_lost are task
    attributes defaulting from their settings; acks_on_failure and acks_on_timeout (5.6)
    default from theirs, then from acks_on_failure_or_timeout.  A class attribute sets
    them for the class's tasks, as any option."""
    class Lossy(Task):
        reject_on_worker_lost = False

    @app.task(base=Lossy, acks_on_failure_or_timeout=False)
    def careful() -> None: ...

    @app.task(acks_on_timeout=False)
    def plain() -> None: ...

    assert careful.reject_on_worker_lost is False and plain.reject_on_worker_lost is True
    assert (careful.acks_on_failure, careful.acks_on_timeout) == (False, False)
    assert (plain.acks_on_failure, plain.acks_on_timeout) == (True, False)
    app.conf.update({"task_acks_on_failure": False})
    assert plain.acks_on_failure is False


def test_amqp_only_options_are_accepted_listed_and_warned_about(
        app: Conveyor, caplog: pytest.LogCaptureFixture) -> None:
    """Celery accepts delivery_mode, exchange, exchange_type, routing_key, mandatory and
    immediate on the decorator and per call (app/task.py extract_exec_options); they
    only mean something to AMQP, so here they load and read back, a worker names the
    tasks that set them in one warning when it starts, and a call naming one is
    warned about once per option."""
    assert set(NO_EFFECT_TASK_OPTIONS) == {"delivery_mode", "exchange", "exchange_type",
                                           "routing_key", "mandatory", "immediate"}

    @app.task(delivery_mode=2, exchange="tasks")
    def persistent() -> int:
        return 1

    class Routed(Task):
        routing_key = "rk"

    @app.task(base=Routed)
    def routed() -> None: ...

    assert (persistent.delivery_mode, persistent.exchange, routed.routing_key) == (
        2, "tasks", "rk")
    with caplog.at_level(logging.WARNING, logger="conveyor.task"):
        result = persistent.apply_async(mandatory=True, immediate=False)
        persistent.apply_async(mandatory=True)
        with run_worker(app):
            assert result.get(timeout=10) == 1
    warned = [r.getMessage() for r in caplog.records if r.name == "conveyor.task"]
    assert len(warned) == 2, warned
    assert warned[0].startswith("apply_async(): mandatory, immediate accepted but has no "
                                "effect in Conveyor (mandatory: an AMQP publish flag")
    startup = warned[1]
    assert "delivery_mode (tasks tests.unit.test_task_attributes.persistent)" in startup
    assert "routing_key (tasks tests.unit.test_task_attributes.routed)" in startup
    assert "AMQP message persistence" in startup


def test_unknown_task_options_still_fail_with_the_known_ones_listed(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="unknown option\\(s\\) max_retry; known:"):
        app.task(max_retry=3)(lambda: None)


def test_register_task_applies_options(app: Conveyor) -> None:
    class Slow(Task):
        def run(self) -> None: ...

    task: Any = app.register_task(Slow(), time_limit=5.0, max_retries=1)
    assert (task.time_limit, task.max_retries) == (5.0, 1)
    assert app.tasks[task.name] is task


def test_track_started_and_ignore_result_as_task_options(backend_url: str) -> None:
    """Celery: Task.track_started (default task_track_started) makes the worker store
    STARTED; Task.ignore_result stores nothing (app/trace.py build_tracer)."""
    app = Conveyor("opts", broker=backend_url, set_as_current=False)
    gate = threading.Event()

    @app.task(track_started=True)
    def slow() -> int:
        gate.wait(10)
        return 1

    @app.task(ignore_result=True)
    def quiet() -> int:
        return 2

    try:
        with run_worker(app) as worker:
            started = slow.delay()
            deadline = time.monotonic() + 10
            while started.state != states.STARTED:
                assert time.monotonic() < deadline, started.state
                time.sleep(0.01)
            gate.set()
            assert started.get(timeout=10) == 1
            unrecorded = quiet.delay()
            worker.join()
        assert unrecorded.state == states.PENDING
    finally:
        gate.set()
        app.close()


def test_a_base_class_call_wrapper_and_name(app: Conveyor) -> None:
    """Celery: a base class overriding __call__ wraps every run (the common "context
    task" pattern: the worker calls the task object); a decorated function keeps its
    own name even when the base class has one (app/base.py _task_from_fun sets name)."""
    class InContext(app.Task):
        name = "the.base"

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return ("wrapped", super().__call__(*args, **kwargs))

    @app.task(base=InContext)
    def plain(x: int) -> int:
        return x + 1

    assert plain.name == "tests.unit.test_task_attributes.plain"
    with run_worker(app):
        assert plain.delay(1).get(timeout=10) == ("wrapped", 2)



def test_replace_called_directly_sends_the_replacement(app: Conveyor) -> None:
    """Celery: Task.on_replace outside eager mode sends the signature and raises Ignore,
    also when the task was called as a plain function."""
    from conveyor.exceptions import Ignore

    @app.task
    def target(x: int) -> int:
        return x

    @app.task(bind=True)
    def replacer(self: Task, x: int) -> Any:
        return self.replace(target.s(x))

    with pytest.raises(Ignore, match="replaced by"):
        replacer(3)
    assert [s.ready for s in app.broker.stats(["default"])] == [1]
