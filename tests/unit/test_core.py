"""The foundation's promises, with the exact texts users will read."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import sys
import types
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

import conveyor
from conveyor import Conveyor, shared_task, states
from conveyor._config import Settings
from conveyor._message import Message, MessageDecodeError
from conveyor._routing import Routes
from conveyor.exceptions import (
    ConfigurationError,
    ContentDisallowed,
    RemoteTaskError,
    ResultTooLarge,
    SerializationError,
)
from conveyor.resultstores.record import ResultRecord


def make_app(**settings: object) -> Conveyor:
    return Conveyor("core-test", broker=f"memory://{uuid.uuid4().hex}", set_as_current=False,
                    **settings)


# -- settings ---------------------------------------------------------------

def test_namespace_reads_prefixed_upper_case_names() -> None:
    app = make_app()
    settings = types.SimpleNamespace(
        CELERY_BROKER_URL="redis://localhost:6379/0",
        CELERY_TASK_ACKS_LATE=True,
        CELERY_WORKER_PREFETCH_MULTIPLIER=1,
        CELERY_RESULT_EXPIRES=dt.timedelta(hours=2),
        DEBUG=True,  # not ours: ignored without complaint
    )
    app.config_from_object(settings, namespace="CELERY")
    assert app.conf.broker_url == "redis://localhost:6379/0"
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.result_expires == 7200.0


def test_mistyped_key_is_reported_with_a_suggestion() -> None:
    app = make_app()
    with pytest.raises(ConfigurationError) as info:
        app.config_from_object({"CELERY_TASK_ACK_LATE": True}, namespace="CELERY")
    assert str(info.value) == (
        "CELERY_* settings: unknown setting 'task_ack_late' (did you mean task_acks_late?)"
    )


def test_wrong_type_names_key_and_value() -> None:
    with pytest.raises(ConfigurationError, match=r"worker_concurrency must be int, got str 'four'"):
        Settings().update({"worker_concurrency": "four"})
    with pytest.raises(ConfigurationError, match=r"worker_pool must be one of prefork, threads"):
        Settings().update({"worker_pool": "greenlets"})


def test_celery_only_settings_load_and_are_named_at_worker_start() -> None:
    """More in tests/unit/test_settings_celery.py: one warning when a worker starts."""
    conf = Settings()
    conf.update({"worker_lost_wait": 5.0})
    assert conf.worker_lost_wait == 5.0
    assert "worker_lost_wait (the supervisor notices" in (conf.warn_no_effect() or "")


def test_celery_include_and_imports_both_load() -> None:
    Settings().update({"include": ["proj.tasks"]})
    app = make_app(imports=["tests.unit.pkg_autodiscover.beta.tasks"])
    assert "tests.unit.pkg_autodiscover.beta.tasks" not in sys.modules
    app.finalize()
    assert "tests.unit.pkg_autodiscover.beta.tasks.beta_task" in app.tasks


def test_plain_module_without_namespace() -> None:
    module = types.ModuleType("celeryconfig")
    module.broker_url = "memory://x"  # type: ignore[attr-defined]
    module.timezone = "Asia/Kathmandu"  # type: ignore[attr-defined]
    module.crontab = lambda: None  # type: ignore[attr-defined]  # an import, not a setting
    app = make_app()
    app.config_from_object(module, namespace=None)
    assert app.conf.timezone == "Asia/Kathmandu"


def test_environment_is_read_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("CONVEYOR_TASK_ACKS_LATE", "false")
    app = make_app()
    assert app.conf.worker_concurrency is None
    app.config_from_env()
    assert (app.conf.worker_concurrency, app.conf.task_acks_late) == (3, False)


def test_sqlite_is_the_default_broker() -> None:
    assert Settings().broker_url == "sqlite:///conveyor.db"
    assert Settings().result_url == "sqlite:///conveyor.db"


def test_results_beside_a_postgres_broker_share_its_schema_option() -> None:
    """``broker_transport_options['schema']`` moves the broker; the result and event
    stores beside it read only their URL, so the schema is written into it."""
    conf = Settings(broker_url="postgresql://u:p@h/db?sslmode=disable&schema=old",
                    broker_transport_options={"schema": "shop"})
    assert conf.result_url == "postgresql://u:p@h/db?sslmode=disable&schema=shop"
    assert Settings(broker_url="postgresql://h/db").result_url == "postgresql://h/db"
    assert Settings(broker_url="postgresql://h/db", broker_transport_options={"schema": "x"},
                    result_backend="postgresql://h/other").result_url == "postgresql://h/other"


# -- tasks and messages --------------------------------------------------------

def test_task_options_are_typed_and_unknown_ones_rejected() -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match=r"unknown option.*max_retry"):
        @app.task(max_retry=3)
        def oops() -> None: ...

    @app.task(bind=True, max_retries=5, rate_limit="10/m", queue="orders", priority=7)
    def ok(self: object) -> None: ...

    assert ok.options.max_retries == 5 and ok.options.queue == "orders"
    with pytest.raises(ConfigurationError, match="rate_limit '10 per minute' is not understood"):
        app.task(rate_limit="10 per minute")(lambda: None)


def test_non_serializable_argument_fails_at_delay_naming_it() -> None:
    app = make_app()

    class Order:
        pk = 7

    @app.task
    def process(order: object) -> None: ...

    with pytest.raises(SerializationError) as info:
        process.delay(order=Order())
    text = str(info.value)
    assert "keyword argument 'order'" in text and "Order instance" in text
    assert "pass its primary key (e.g. obj.pk)" in text
    with socket.socket() as sock, pytest.raises(
            SerializationError, match=r"positional argument 0 is a socket\.socket"):
        process.delay(sock)
    assert app.broker.stats(["default"])[0].ready == 0, "nothing was enqueued"


def test_wrong_call_signature_fails_at_the_caller() -> None:
    app = make_app()

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        add.delay(1)


def test_rich_values_round_trip() -> None:
    when = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.timezone.utc)
    args = (when, Decimal("12.50"), uuid.UUID(int=1), b"\x00\xff", (1, 2), {3}, {"__t": "x"})
    message = Message(id="m", task="t", args=args, kwargs={"when": when.date()})
    decoded = Message.decode(message.encode(), ["json"])
    assert decoded.args == args and decoded.kwargs == {"when": when.date()}


def test_pickle_is_refused_unless_accepted() -> None:
    message = Message(id="m", task="t", args=(1,), content_type="application/x-python-serialize")
    with pytest.raises(ContentDisallowed, match="accept_content allows only"):
        Message.decode(message.encode(), ["json"])
    assert Message.decode(message.encode(), ["json", "pickle"]).args == (1,)


@pytest.mark.parametrize(("body", "reason"), [
    (b"nope", "body is not JSON"),
    (b'{"task": "t"}', "message has no string field 'id'"),
    (b'{"id": "a", "task": "t", "v": 9}', "unsupported message version 9"),
    (b'{"id": "a", "task": "t", "args": "abc"}', "args must be a list"),
])
def test_decode_errors_say_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(MessageDecodeError, match=reason):
        Message.decode(body, ["json"])


def test_send_options_are_checked() -> None:
    app = make_app()

    @app.task
    def noop() -> None: ...

    with pytest.raises(ConfigurationError, match=r"priority must be an integer 0..9"):
        noop.apply_async(priority=12)
    with pytest.raises(ValueError, match="not an ISO 8601"):
        noop.apply_async(eta="next tuesday")
    with pytest.raises(TypeError, match=r"unknown option.*countdwn"):
        noop.apply_async(countdwn=3)


def test_idempotency_key_returns_the_first_task() -> None:
    app = make_app()

    @app.task
    def send_welcome(user_id: int) -> None: ...

    first = send_welcome.apply_async((1,), idempotency_key="welcome-1")
    again = send_welcome.apply_async((1,), idempotency_key="welcome-1")
    assert again.id == first.id
    assert app.broker.stats(["default"])[0].ready == 1


# -- shared tasks and discovery ------------------------------------------------

def test_shared_task_declared_before_the_app_exists() -> None:
    @shared_task(name="core.early")
    def early() -> str:
        return "early"

    app = Conveyor("later", broker=f"memory://{uuid.uuid4().hex}", set_as_current=True)
    assert app.tasks["core.early"] is early
    assert early.app is app
    result = early.delay()
    assert app.broker.stats(["default"])[0].ready == 1
    assert result.app is app


def test_autodiscover_plain_packages() -> None:
    app = make_app()
    app.autodiscover_tasks(["tests.unit.pkg_autodiscover.alpha"])
    assert "tests.unit.pkg_autodiscover.alpha.tasks" not in sys.modules  # lazy
    app.finalize()
    assert "tests.unit.pkg_autodiscover.alpha.tasks.alpha_task" in app.tasks


# -- routing -------------------------------------------------------------------

def test_routes_globs_lists_and_callables() -> None:
    routes = Routes([
        {"orders.tasks.process_order": {"queue": "orders"}, "reports.tasks.*": "reports"},
        lambda name, args, kwargs, options: {"queue": "fallback"} if name.startswith("x") else None,
    ])
    assert routes.route("orders.tasks.process_order", (), {}, {}) == {"queue": "orders"}
    assert routes.route("reports.tasks.weekly", (), {}, {}) == {"queue": "reports"}
    assert routes.route("x.y", (), {}, {}) == {"queue": "fallback"}
    assert routes.route("other", (), {}, {}) == {}
    with pytest.raises(ConfigurationError, match=r"task_routes\['a'\] must be a queue name"):
        Routes({"a": 3})


def test_per_call_queue_beats_routes_and_default() -> None:
    app = make_app(task_routes={"core.*": {"queue": "routed"}}, task_default_queue="dflt")

    @app.task(name="core.job")
    def job() -> None: ...

    @app.task(name="plain.job")
    def plain() -> None: ...

    assert app.build_message("core.job").queue == "routed"
    assert app.build_message("core.job", queue="urgent").queue == "urgent"
    assert app.build_message("plain.job").queue == "dflt"


# -- results -----------------------------------------------------------------

def test_oversized_result_is_refused_and_large_one_warned(
        caplog: pytest.LogCaptureFixture) -> None:
    record = ResultRecord(task_id="t1", state=states.SUCCESS, result="x" * 2000, task="big")
    with pytest.raises(ResultTooLarge,
                       match=r"big\[t1\] is \d+ bytes, above result_max_bytes=1000"):
        record.encode(max_bytes=1000)
    with caplog.at_level(logging.WARNING, logger="conveyor.resultstores"):
        record.encode(max_bytes=10_000, warn_bytes=1000)
    assert "results are meant to be small" in caplog.text


class Outer:
    class Missing(LookupError):
        """Like Django's Model.DoesNotExist: an exception class nested in a class."""


def test_failures_come_back_as_the_same_type_with_the_remote_traceback() -> None:
    record = ResultRecord(task_id="t", state=states.FAILURE, result="no such order",
                          exc_type="KeyError", exc_module="builtins", traceback="Traceback...")
    exc = record.exception()
    assert isinstance(exc, KeyError)
    assert "Remote traceback (task t)" in exc.__notes__[0]
    nested = ResultRecord(task_id="t", state=states.FAILURE, result="gone",
                          exc_type="Outer.Missing", exc_module=__name__)
    assert isinstance(nested.exception(), Outer.Missing)
    unknown = ResultRecord(task_id="t", state=states.FAILURE, result="boom",
                           exc_type="GoneError", exc_module="nowhere.at.all")
    assert isinstance(unknown.exception(), RemoteTaskError)


def test_public_names_are_exported_and_importable() -> None:
    for name in conveyor.__all__:
        assert hasattr(conveyor, name), name
    from conveyor.exceptions import (  # noqa: F401 - the documented import paths
        MaxRetriesExceededError,
        Reject,
        Retry,
        SoftTimeLimitExceeded,
        TimeLimitExceeded,
    )
    from conveyor.log import get_task_logger  # noqa: F401
    from conveyor.schedules import crontab, schedule  # noqa: F401


def test_a_django_projects_default_sqlite_file_is_next_to_base_dir(tmp_path: Path) -> None:
    """Issue 16: the default ``sqlite:///conveyor.db`` was relative to the working
    directory, so a shell started one folder away from the worker wrote to
    another file and its ``get()`` waited for nothing.  With a settings object
    that has ``BASE_DIR`` (every Django project), the default file is there."""
    app = Conveyor("anchored", set_as_current=False)
    app.config_from_object(types.SimpleNamespace(BASE_DIR=tmp_path), namespace="CELERY")
    assert app.conf.broker_url == f"sqlite:///{tmp_path / 'conveyor.db'}"
    chosen = Conveyor("chosen", set_as_current=False)
    chosen.config_from_object(types.SimpleNamespace(
        BASE_DIR=tmp_path, CELERY_BROKER_URL="sqlite:///elsewhere.db"), namespace="CELERY")
    assert chosen.conf.broker_url == "sqlite:///elsewhere.db"  # an explicit URL is kept
    plain = Conveyor("plain", set_as_current=False)
    plain.config_from_object(types.SimpleNamespace(CELERY_TIMEZONE="UTC"), namespace="CELERY")
    assert plain.conf.broker_url == "sqlite:///conveyor.db"  # no anchor: as documented


def test_environment_variables_follow_the_settings_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: monitoring.md says ``CELERY_MONITOR_BASIC_AUTH`` works under
    ``namespace="CELERY"``; only ``CONVEYOR_*`` was read from the environment."""
    monkeypatch.setenv("CELERY_MONITOR_BASIC_AUTH", "ops:one")
    monkeypatch.setenv("CONVEYOR_TASK_DEFAULT_QUEUE", "from-conveyor")
    app = make_app()
    app.config_from_object(types.SimpleNamespace(CELERY_TIMEZONE="UTC"), namespace="CELERY")
    app.config_from_env()
    assert app.conf.monitor_basic_auth == ["ops:one"]
    assert app.conf.task_default_queue == "from-conveyor"
    plain = make_app()
    plain.config_from_env()  # no namespace was used: CELERY_* is not this app's
    assert plain.conf.monitor_basic_auth == []
