"""The Signal object behaves as Celery's (celery/utils/dispatch/signal.py)."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor import signals
from conveyor._dispatch import Signal


def test_connect_plain_bare_decorator_and_decorator_with_options() -> None:
    """Celery: Signal.connect is a call, a bare decorator or a decorator factory;
    each returns the receiver."""
    sig = Signal("s")
    calls: list[str] = []

    def plain(**kw: Any) -> str:
        calls.append("plain")
        return "p"

    assert sig.connect(plain) is plain

    @sig.connect
    def bare(**kw: Any) -> None:
        calls.append("bare")

    @sig.connect(sender="x", weak=False)
    def opts(**kw: Any) -> None:
        calls.append("opts")

    assert callable(bare) and callable(opts)
    responses = sig.send(sender="x")
    assert calls == ["plain", "bare", "opts"]
    assert responses[0] == (plain, "p")


def test_sender_filter_strings_by_value_objects_by_identity() -> None:
    """Celery: _make_id compares strings by value and other senders by id()."""
    sig = Signal("s")
    got: list[Any] = []
    a, b = object(), object()
    sig.connect(lambda sender, **kw: got.append(("a", sender)), sender=a, weak=False)
    sig.connect(lambda sender, **kw: got.append(("name", sender)), sender="t.add", weak=False)
    sig.connect(lambda sender, **kw: got.append(("any", sender)), weak=False)
    sig.send(sender=b)
    sig.send(sender=a)
    sig.send(sender="".join(["t.", "add"]))  # an equal string, not the same object
    assert got == [("any", b), ("a", a), ("any", a), ("name", "t.add"), ("any", "t.add")]


def test_weak_receivers_die_with_their_scope_and_weak_false_keeps_them() -> None:
    """Celery: receivers are weak references unless weak=False."""
    sig = Signal("s")

    def install() -> None:
        def local(**kw: Any) -> str:
            return "weak"

        def kept(**kw: Any) -> str:
            return "strong"

        sig.connect(local)
        sig.connect(kept, weak=False)

    install()
    gc.collect()
    assert [r for _, r in sig.send(sender=None)] == ["strong"]
    assert len(sig.receivers) == 1


def test_bound_method_receiver_lives_as_long_as_its_object() -> None:
    """Celery: a bound method is held with WeakMethod (not dropped at once)."""
    sig = Signal("s")

    class Listener:
        def on(self, **kw: Any) -> str:
            return "heard"

    listener = Listener()
    sig.connect(listener.on)
    gc.collect()
    assert [r for _, r in sig.send(sender=None)] == ["heard"]
    del listener
    gc.collect()
    assert sig.send(sender=None) == []


def test_dispatch_uid_deduplicates_and_disconnect_removes() -> None:
    """Celery: (dispatch_uid or receiver, sender) identifies one connection."""
    sig = Signal("s")

    def one(**kw: Any) -> int:
        return 1

    def two(**kw: Any) -> int:
        return 2

    sig.connect(one, dispatch_uid="uid")
    sig.connect(two, dispatch_uid="uid")  # same uid: ignored
    sig.connect(one)
    sig.connect(one)  # twice: once
    assert [r for _, r in sig.send(sender=None)] == [1, 1]
    assert sig.disconnect(dispatch_uid="uid") is True
    assert sig.disconnect(one) is True
    assert sig.disconnect(one) is False
    assert sig.send(sender=None) == []


def test_a_raising_receiver_is_logged_and_returned_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    """Celery: send logs a receiver's exception and returns it as its response."""
    sig = Signal("s")
    error = RuntimeError("broken receiver")

    def bad(**kw: Any) -> None:
        raise error

    def good(**kw: Any) -> str:
        return "ok"

    sig.connect(bad)
    sig.connect(good)
    with caplog.at_level(logging.ERROR, "conveyor.signals"):
        responses = sig.send(sender=None)
    assert responses == [(bad, error), (good, "ok")]
    assert "broken receiver" in caplog.text


def test_receivers_must_accept_keyword_arguments() -> None:
    """Celery: connect raises ValueError for a receiver without **kwargs."""
    sig = Signal("s")

    def no_kwargs(sender: Any) -> None:
        pass

    with pytest.raises(ValueError, match="must accept keyword arguments"):
        sig.connect(no_kwargs)


def test_retry_receiver_is_called_again_until_it_succeeds(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Celery: connect(retry=True) retries a raising receiver (once a second)."""
    monkeypatch.setattr("conveyor._dispatch.RETRY_INTERVAL", 0.01)
    sig = Signal("s")
    tries: list[int] = []

    def flaky(**kw: Any) -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("not yet")
        return "done"

    sig.connect(flaky, retry=True)
    assert [r for _, r in sig.send(sender=None)] == ["done"]
    assert len(tries) == 3


def test_every_celery_signal_name_exists_with_celery_arguments() -> None:
    """Celery: celery/signals.py names and providing_args (celeryd_init also under a
    Conveyor name)."""
    expected = {
        "before_task_publish": {"body", "exchange", "routing_key", "headers", "properties",
                                "declare", "retry_policy"},
        "task_prerun": {"task_id", "task", "args", "kwargs"},
        "task_postrun": {"task_id", "task", "args", "kwargs", "retval", "state"},
        "task_failure": {"task_id", "exception", "args", "kwargs", "traceback", "einfo"},
        "task_unknown": {"message", "exc", "name", "id"},
        "task_revoked": {"request", "terminated", "signum", "expired"},
        "setup_logging": {"loglevel", "logfile", "format", "colorize"},
        "celeryd_init": {"instance", "conf", "options"},
    }
    for name, args in expected.items():
        assert getattr(signals, name).providing_args == args, name
    for name in ("task_received", "task_success", "task_retry", "task_rejected",
                 "task_internal_error", "after_task_publish", "worker_init", "worker_ready",
                 "worker_process_init", "worker_process_shutdown", "worker_shutting_down",
                 "worker_shutdown", "beat_init", "beat_embedded_init", "after_setup_logger",
                 "after_setup_task_logger", "import_modules", "celeryd_after_setup",
                 "worker_before_create_process", "heartbeat_sent"):
        assert isinstance(getattr(signals, name), Signal), name
    assert signals.worker_configure is signals.celeryd_init


def test_logging_proxy_logs_whole_lines_and_never_loops() -> None:
    """Celery: app/log.py redirect_stdouts logs what is written to stdout line by line
    (LoggingProxy); a write made while logging goes to the real stream."""
    import io

    from conveyor.log import LoggingProxy

    records: list[str] = []
    real = io.StringIO()

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())
            proxy.write("written while logging\n")  # must not recurse

    logger = logging.getLogger("conveyor.test-proxy")
    logger.propagate = False
    logger.addHandler(Recorder())
    proxy = LoggingProxy(logger, logging.WARNING, real)
    proxy.write("one\ntw")
    proxy.write("o\n\n")
    proxy.write("tail")
    assert records == ["one", "two"]
    proxy.flush()
    assert records == ["one", "two", "tail"]
    assert real.getvalue() == "written while logging\n" * 3


def test_a_send_with_django_imported_but_not_configured_goes_ahead(tmp_path: Path) -> None:
    """A process that imported ``django.conf`` (a library did) without settings:
    sending on commit finds no transaction and sends now, instead of raising
    Django's ImproperlyConfigured from the check for a configured Django."""
    code = (
        "import django.conf\n"
        "from conveyor import Conveyor\n"
        f"app = Conveyor('plain', broker='sqlite:///{tmp_path}/b.db', set_as_current=False)\n"
        "app.send_task('t.any', on_commit=True)\n"
        "print(app.broker.stats(['default'])[0].ready)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"
