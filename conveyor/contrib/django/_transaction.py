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

With a PostgreSQL broker in the same database as the open ``atomic`` block,
there is no waiting for the commit: every send inside the block (``.delay()``
too) writes its message in the block's own transaction, so it is queued if
and only if the data commits, with no window between the two
(:func:`broker_transaction`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def broker_transaction(broker_url: str) -> Any:
    """The psycopg connection of the open ``atomic`` block, when it is on the
    database the PostgreSQL broker at ``broker_url`` uses; else None."""
    alias = open_transaction_alias()
    if alias is None or not broker_url.lower().startswith(("postgresql:", "postgres:")):
        return None
    conn = connections[alias]
    if conn.vendor != "postgresql" or not same_database(conn, broker_url):
        return None
    conn.ensure_connection()
    return conn.connection


def same_database(conn: Any, broker_url: str) -> bool:
    """Whether Django's connection ``conn`` and the PostgreSQL URL name one database."""
    from psycopg.conninfo import conninfo_to_dict

    from conveyor._postgres import parse_postgres_url

    ours = conninfo_to_dict(parse_postgres_url(broker_url).conninfo)
    theirs = conn.get_connection_params()
    return (_host(ours.get("host")), str(ours.get("port") or 5432), ours.get("dbname")) == (
        _host(theirs.get("host")), str(theirs.get("port") or 5432), theirs.get("dbname"))


def _host(host: object) -> str:
    return "127.0.0.1" if host in (None, "", "localhost") else str(host)


def install() -> None:
    """Register with Conveyor (called by the app config; idempotent)."""
    from conveyor import signals

    signals.add_deferrer(defer_to_commit)
    signals.add_transaction_finder(broker_transaction)


__all__ = ["broker_transaction", "defer_to_commit", "install", "open_transaction_alias",
           "same_database"]
