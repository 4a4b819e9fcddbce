"""Sending tasks when the database transaction commits.

A task sent inside ``transaction.atomic()`` can start before the rows it
reads are committed (it sees the old data, or none), and still runs if the
transaction rolls back.  ``task.delay_on_commit(...)`` and
``task.apply_async_on_commit(...)`` hand the send to Django's
``transaction.on_commit``; with ``task_enqueue_on_commit = True`` plain
``.delay()`` does the same.  Outside a transaction the send happens at once.

The message (its id, and the check that its arguments serialize) is made at
the call, so a bad argument fails where it was passed, not at commit.  If
the broker refuses the send at commit time the error propagates from the
``atomic`` block's exit, after the data is committed.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import DEFAULT_DB_ALIAS, connections, transaction


def open_transaction_alias() -> str | None:
    """The database alias with an open ``atomic`` block (default first), if any."""
    if connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return DEFAULT_DB_ALIAS
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            return conn.alias
    return None


def defer_to_commit(send: Callable[[], object]) -> bool:
    """The deferrer registered with :mod:`conveyor.signals`."""
    alias = open_transaction_alias()
    if alias is None:
        return False
    transaction.on_commit(send, using=alias)
    return True


def install() -> None:
    """Register with Conveyor (called by the app config; idempotent)."""
    from conveyor import signals

    signals.add_deferrer(defer_to_commit)


__all__ = ["defer_to_commit", "install", "open_transaction_alias"]
