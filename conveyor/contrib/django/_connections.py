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


def retry_on_disconnect(using: str, operation: Callable[[], T]) -> T:
    """Run ``operation``; if the connection turned out dead, reconnect and run it once more.

    Only for reads and idempotent writes, and never inside an ``atomic``
    block (the transaction is gone with the connection).
    """
    try:
        return operation()
    except (OperationalError, InterfaceError):
        conn = connections[using]
        if conn.in_atomic_block:
            raise
        log.info("database %r dropped the connection; retrying once on a new one", using)
        _close(conn)
        return operation()


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
]
