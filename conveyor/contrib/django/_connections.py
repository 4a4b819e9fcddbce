"""Database connection hygiene for worker and beat processes.

A web request starts and ends with ``close_old_connections()``; a worker has
no requests, so without help a connection lives as long as the process and
the first task after a database restart (or a failover, or an idle timeout
in a pooler) fails with "connection already closed".  The Django app wires
these functions to :mod:`conveyor.signals` so that, around every task:

* before: connections past ``CONN_MAX_AGE``, broken by an earlier error, or
  left outside autocommit are closed; a persistent connection is also
  checked with a round trip (``is_usable()``) unless ``CONN_HEALTH_CHECKS``
  is on, in which case Django checks it lazily on first use.  A dead
  connection is replaced by a fresh one when the task first queries.
* after: the same ``CONN_MAX_AGE`` rule as the end of a request, so the
  default ``CONN_MAX_AGE = 0`` closes the connection after each task.

Connections inside an ``atomic`` block are never touched (a test wrapping a
task in a transaction, or a task calling another task's body directly).

Fork: a child process must never use, or close, a connection it inherited:
both processes would talk over one socket, and closing it could end the
parent's session on the server.  After ``fork`` the child forgets every
inherited connection (keeping the objects referenced so no destructor runs)
and opens its own on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

log = logging.getLogger("conveyor.django")

# Inherited connection objects, kept alive in a forked child: collecting them
# could run a driver destructor that says goodbye to the server on the
# parent's behalf.
_inherited: list[Any] = []
_installed = False
T = TypeVar("T")


def _initialized() -> Iterator[BaseDatabaseWrapper]:
    """Connections this thread has created (never creates one)."""
    yield from connections.all(initialized_only=True)


def _close(conn: BaseDatabaseWrapper) -> None:
    with contextlib.suppress(DatabaseError):
        conn.close()


def prepare_connections(**_: Any) -> None:
    """Before a task: drop connections that cannot serve it (see module docstring)."""
    for conn in _initialized():
        if conn.in_atomic_block:
            continue
        try:
            conn.close_if_unusable_or_obsolete()
        except DatabaseError:
            _close(conn)
            continue
        usable = conn.connection is None or conn.health_check_enabled or conn.is_usable()
        if not usable:
            log.info("database connection %r was dead; reconnecting", conn.alias)
            _close(conn)


def release_connections(**_: Any) -> None:
    """After a task: apply ``CONN_MAX_AGE`` as the end of a request does."""
    for conn in _initialized():
        if conn.in_atomic_block:
            continue
        try:
            conn.close_if_unusable_or_obsolete()
        except DatabaseError:
            _close(conn)


def forget_inherited_connections() -> None:
    """In a forked child: replace every inherited connection with an unopened one."""
    for conn in list(_initialized()):
        if conn.connection is not None:
            _inherited.append(conn)
        connections[conn.alias] = connections.create_connection(conn.alias)


# Pauses between tries of an operation that found a table locked (about 2.5 s in all).
LOCK_PAUSES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 0.8)


def waiting_out_locks(using: str, operation: Callable[[], T]) -> T:
    """Run ``operation``, trying again while SQLite says a table is locked.

    SQLite's shared-cache mode, which Django's in-memory *test* databases
    use, answers "database table is locked" at once while another
    connection (a worker thread's) writes that table: the busy timeout does
    not apply.  The lock lasts one short transaction, so wait it out, as the
    busy timeout would have.  Not inside an ``atomic`` block, whose
    transaction the caller owns.
    """
    for pause in LOCK_PAUSES:
        try:
            return operation()
        except OperationalError as exc:
            if "locked" not in str(exc) or connections[using].in_atomic_block:
                raise
            time.sleep(pause)
    return operation()


def retry_on_disconnect(using: str, operation: Callable[[], T]) -> T:
    """Run ``operation``; if the connection turned out dead, reconnect and run it once more.

    Only for reads and idempotent writes, and never inside an ``atomic``
    block (the transaction is gone with the connection).  A locked table is
    waited out first (:func:`waiting_out_locks`).
    """
    try:
        return waiting_out_locks(using, operation)
    except (OperationalError, InterfaceError):
        conn = connections[using]
        if conn.in_atomic_block:
            raise
        log.info("database %r dropped the connection; retrying once on a new one", using)
        _close(conn)
        return waiting_out_locks(using, operation)


def install() -> None:
    """Wire the hooks (called by the app config; idempotent)."""
    global _installed
    from conveyor import signals

    signals.message_prerun.connect(prepare_connections)
    signals.message_postrun.connect(release_connections)
    if not _installed:
        _installed = True
        os.register_at_fork(after_in_child=forget_inherited_connections)


def uninstall() -> None:
    """Disconnect the task hooks (tests); the fork hook cannot be removed and is harmless."""
    from conveyor import signals

    signals.message_prerun.disconnect(prepare_connections)
    signals.message_postrun.disconnect(release_connections)


__all__ = [
    "forget_inherited_connections",
    "install",
    "prepare_connections",
    "release_connections",
    "retry_on_disconnect",
    "waiting_out_locks",
]
