"""Celery's signals, sent at Celery's moments with Celery's arguments, and the commit hook.

Every signal of ``celery.signals`` that has a meaning here exists under the
same name, with the same ``sender`` and keyword arguments, so a receiver
written for Celery connects unchanged (see :mod:`conveyor._dispatch` for
``connect``/``send``).  Where an argument only means something on AMQP, the
value Celery users actually read is passed instead (``routing_key`` is the
queue, ``exchange`` is ``""``); the table in docs/migrating-from-celery.md
("Signals and logging") lists each difference and why.

A receiver that raises is logged and skipped: a broken integration must not
make the worker drop or repeat messages.  Nothing is sent when nothing is
connected (one truthiness test), so unused signals cost the worker nothing.

Two Conveyor hooks wrap the handling of every decoded message, whatever
happens to it (revoked, unknown, run): :data:`message_prerun` before any
result write about it and :data:`message_postrun` after the last.  The
Django integration uses them for database-connection hygiene, which must
also cover the REVOKED and FAILURE records of messages that never run (the
Celery signals ``task_prerun``/``task_postrun`` only wrap a run).

:func:`defer_until_commit` asks the registered *deferrers* whether the
caller is inside a database transaction; the first that says yes takes the
send and runs it when that transaction commits (and never, if it rolls
back).  Without a deferrer, or outside a transaction, sending happens now.
Receivers and deferrers are registered explicitly by the integration (the
Django app does it in ``AppConfig.ready``); nothing here switches on by itself.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from conveyor._dispatch import Receiver, Signal

#: Takes a zero-argument send; returns True if it will run it at commit time.
Deferrer = Callable[[Callable[[], object]], bool]

# -- sending (sender: the task name) ------------------------------------------
#: Before a message goes to the broker.  ``headers`` may be changed: keys a
#: receiver adds travel with the message (``self.request.headers``).
before_task_publish = Signal("before_task_publish", {
    "body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"})
#: After the broker took the message.
after_task_publish = Signal("after_task_publish", {"body", "exchange", "routing_key", "headers"})

# -- the worker, per task (sender: the task object unless noted) --------------
#: sender=the worker's executor; ``request`` describes the message.  Sent just
#: before the run, once the message passed its checks (not for revoked,
#: expired or unknown ones, as in Celery).
task_received = Signal("task_received", {"request"})
task_prerun = Signal("task_prerun", {"task_id", "task", "args", "kwargs"})
task_postrun = Signal("task_postrun", {"task_id", "task", "args", "kwargs", "retval", "state"})
task_success = Signal("task_success", {"result"})
task_retry = Signal("task_retry", {"request", "reason", "einfo"})
task_failure = Signal("task_failure", {
    "task_id", "exception", "args", "kwargs", "traceback", "einfo"})
task_internal_error = Signal("task_internal_error", {
    "task_id", "args", "kwargs", "request", "exception", "traceback", "einfo"})
task_revoked = Signal("task_revoked", {"request", "terminated", "signum", "expired"})
#: sender=the executor; a message that cannot be a task (undecodable, refused).
task_rejected = Signal("task_rejected", {"message", "exc"})
#: sender=the executor; a task name this worker does not know.
task_unknown = Signal("task_unknown", {"message", "exc", "name", "id"})

# -- the worker process ---------------------------------------------------------
#: sender=the hostname, before the worker is set up (Celery's ``celeryd_init``).
worker_configure = Signal("celeryd_init", {"instance", "conf", "options"})
celeryd_init = worker_configure
#: sender=the hostname, after the worker is set up and before it consumes.
celeryd_after_setup = Signal("celeryd_after_setup", {"instance", "conf"})
worker_init = Signal("worker_init")
#: sender=the prefork pool, in the worker process, before each child is forked.
worker_before_create_process = Signal("worker_before_create_process")
#: sender=the worker, before each heartbeat it publishes.
heartbeat_sent = Signal("heartbeat_sent")
worker_ready = Signal("worker_ready")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown", {"pid", "exitcode"})
worker_shutting_down = Signal("worker_shutting_down", {"sig", "how", "exitcode"})
worker_shutdown = Signal("worker_shutdown")
#: sender=the app, before the ``imports``/``include`` modules are imported.
import_modules = Signal("import_modules")

# -- beat ------------------------------------------------------------------------
beat_init = Signal("beat_init")
beat_embedded_init = Signal("beat_embedded_init")

# -- logging (sender: None) ----------------------------------------------------
#: Connected: Conveyor configures no logging at all (the receiver does).
setup_logging = Signal("setup_logging", {"loglevel", "logfile", "format", "colorize"})
after_setup_logger = Signal("after_setup_logger", {
    "logger", "loglevel", "logfile", "format", "colorize"})
after_setup_task_logger = Signal("after_setup_task_logger", {
    "logger", "loglevel", "logfile", "format", "colorize"})

# -- Conveyor's own hooks (sender: the app) -----------------------------------
#: ``task_id, task (name), message`` — before any result write about a message.
message_prerun = Signal("message_prerun", {"task_id", "task", "message"})
#: ``task_id, task (name), message, state`` — after the last result write.
message_postrun = Signal("message_postrun", {"task_id", "task", "message", "state"})

_deferrers: list[Deferrer] = []
#: Given a broker URL: a DB-API connection inside the caller's open transaction
#: on that database, or None.  Django registers one (conveyor.contrib.django).
TransactionFinder = Callable[[str], Any]
_finders: list[TransactionFinder] = []


def add_transaction_finder(finder: TransactionFinder) -> None:
    """Register a way to find the caller's open transaction (idempotent)."""
    if finder not in _finders:
        _finders.append(finder)


def transaction_connection(broker_url: str) -> Any:
    """The connection of the caller's open transaction on the broker's own database.

    A database broker (PostgreSQL) writes a message sent inside that
    transaction on this connection: queued if and only if the caller commits.
    """
    if not _deferrers:
        _install_django_if_configured()
    for finder in list(_finders):
        connection = finder(broker_url)
        if connection is not None:
            return connection
    return None


def add_deferrer(deferrer: Deferrer) -> None:
    """Register a transaction integration (idempotent)."""
    if deferrer not in _deferrers:
        _deferrers.append(deferrer)


def remove_deferrer(deferrer: Deferrer) -> None:
    if deferrer in _deferrers:
        _deferrers.remove(deferrer)


def defer_until_commit(send: Callable[[], object]) -> bool:
    """Hand ``send`` to the caller's open transaction, if there is one.

    Returns True when a deferrer took it (it will run at commit), False when
    the caller should send now.
    """
    if not _deferrers:
        _install_django_if_configured()
    return any(deferrer(send) for deferrer in list(_deferrers))


def _install_django_if_configured() -> None:
    """Celery needs no Django app for on-commit sending, it notices Django by itself;
    so does this, the first time a send asks: when Django's settings are
    configured, its transactions defer sends whether or not
    ``conveyor.contrib.django`` is in ``INSTALLED_APPS``.

    The installer is found through the ``conveyor.django_deferrers`` entry
    point (``pyproject.toml``), so the core never imports ``conveyor.contrib``.
    """
    conf = sys.modules.get("django.conf")
    settings = getattr(conf, "settings", None)
    # ``configured`` is read without loading the settings; the truth of the
    # lazy object itself would load them, and raise when Django was imported
    # but never configured (a library that imports django.conf).
    if settings is None or not settings.configured:
        return
    for point in _django_deferrer_installers():
        point.load()()


@functools.cache
def _django_deferrer_installers() -> tuple[EntryPoint, ...]:
    return tuple(entry_points(group="conveyor.django_deferrers"))


__all__ = [
    "Deferrer",
    "Receiver",
    "Signal",
    "TransactionFinder",
    "add_deferrer",
    "add_transaction_finder",
    "after_setup_logger",
    "after_setup_task_logger",
    "after_task_publish",
    "beat_embedded_init",
    "beat_init",
    "before_task_publish",
    "celeryd_after_setup",
    "celeryd_init",
    "defer_until_commit",
    "heartbeat_sent",
    "import_modules",
    "message_postrun",
    "message_prerun",
    "remove_deferrer",
    "setup_logging",
    "task_failure",
    "task_internal_error",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "task_unknown",
    "transaction_connection",
    "worker_before_create_process",
    "worker_configure",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutdown",
    "worker_shutting_down",
]
