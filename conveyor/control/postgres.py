"""The control channel in the broker's PostgreSQL database: two tables, woken by NOTIFY.

A command is a row; publishing it sends ``NOTIFY`` in the same transaction,
so a worker's control thread wakes the moment the row commits and reads the
rows past the last one it saw.  A reply is a row too, and its ``NOTIFY``
wakes the sender waiting for it.  A notification that is missed (the
listening connection was being re-made) costs at most :data:`POLL` seconds:
waiters look again that often anyway.

Schema (in the URL's ``schema``, beside the broker's tables; component
``control`` in ``conveyor_schema``)::

    conveyor_control           one row per broadcast command
      seq        bigserial PRIMARY KEY  publication order; a listener starts at the
                                        current maximum and reads rows past it
      body       text                   the command as JSON (base.Command)
      expires_at double precision       deleted after this (REPLY_TTL), by publish

    conveyor_control_replies   one row per worker answer
      n          bigserial PRIMARY KEY
      command_id text                   index conveyor_control_replies_by_command
      body       text                   JSON [node, reply]
      expires_at double precision       deleted after this, by publish

Publishers take a transaction-scoped advisory lock, so sequence order is
commit order: a listener reading ``seq > last`` can never skip a command
that committed after a later-numbered one.  Commands are rare; the lock
costs nothing that matters.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

from conveyor._postgres import Listener as Notifications
from conveyor._postgres import Pool, ensure_schema, parse_postgres_url, quoted
from conveyor.control.base import (
    REPLY_TTL,
    Command,
    ControlChannel,
    Listener,
    decode_reply,
    encode_reply,
    parse_commands,
)

POLL = 1.0  # seconds between looks when no notification arrives
SCHEMA_VERSION = 1
MIGRATIONS = [[
    """CREATE TABLE IF NOT EXISTS {schema}.conveyor_control (
        seq bigserial PRIMARY KEY, body text NOT NULL,
        expires_at double precision NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {schema}.conveyor_control_replies (
        n bigserial PRIMARY KEY, command_id text NOT NULL, body text NOT NULL,
        expires_at double precision NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS conveyor_control_replies_by_command
        ON {schema}.conveyor_control_replies (command_id, n)""",
]]
_PUBLISH_LOCK = 0x636F6E74  # "cont": serialises publishers (see the module docstring)


def _fetch(sql: str, params: tuple[Any, ...], conn: Any) -> list[Any]:
    return list(conn.execute(sql, params).fetchall())


class PostgresListener(Listener):
    def __init__(self, channel: PostgresChannel) -> None:
        self._channel = channel
        self._wake = channel.notifications(channel.commands_channel)
        row = channel.pool.run("read control commands", lambda c: c.execute(
            channel.sql("SELECT coalesce(max(seq), 0) FROM {schema}.conveyor_control"))
            .fetchone(), retry=True)
        self._last = int(row[0]) if row else 0

    def receive(self, timeout: float) -> list[Command]:
        deadline = time.monotonic() + timeout
        sql = self._channel.sql(
            "SELECT seq, body FROM {schema}.conveyor_control WHERE seq > %s ORDER BY seq")
        while True:
            generation = self._wake.generation()  # before looking: no wake-up is missed
            rows = self._channel.pool.run("read control commands", lambda c: c.execute(
                sql, (self._last,)).fetchall(), retry=True)
            if rows:
                self._last = int(rows[-1][0])
                return parse_commands([body for _, body in rows])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._wake.wait(generation, min(POLL, remaining))

    def close(self) -> None:
        self._wake.stop()


class PostgresChannel(ControlChannel):
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        parsed = parse_postgres_url(url, (options or {}).get("schema"))
        self.pool = Pool(parsed, size=2)
        self._schema = quoted(parsed.schema)
        self.commands_channel = f"conveyor_{parsed.schema}_control"[:63]
        self.replies_channel = f"conveyor_{parsed.schema}_replies"[:63]
        ensure_schema(self.pool, "control", SCHEMA_VERSION, MIGRATIONS)
        self._reply_wake: Notifications | None = None

    def sql(self, template: str) -> str:
        return template.format(schema=self._schema)

    def notifications(self, channel: str) -> Notifications:
        return Notifications(self.pool, channel)

    def publish(self, command: Command) -> None:
        now = time.time()

        def store(conn: Any) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK,))
            conn.execute(self.sql("DELETE FROM {schema}.conveyor_control "
                                  "WHERE expires_at < %s"), (now,))
            conn.execute(self.sql("DELETE FROM {schema}.conveyor_control_replies "
                                  "WHERE expires_at < %s"), (now,))
            conn.execute(self.sql("INSERT INTO {schema}.conveyor_control (body, expires_at) "
                                  "VALUES (%s, %s)"), (command.encode(), now + REPLY_TTL))
            conn.execute("SELECT pg_notify(%s, '')", (self.commands_channel,))

        self.pool.run("publish a control command", store, transaction=True)

    def listen(self) -> Listener:
        return PostgresListener(self)

    def reply(self, command_id: str, node: str, body: Any) -> None:
        row = (command_id, encode_reply(node, body), time.time() + REPLY_TTL)

        def store(conn: Any) -> None:
            conn.execute(self.sql("INSERT INTO {schema}.conveyor_control_replies "
                                  "(command_id, body, expires_at) VALUES (%s, %s, %s)"), row)
            conn.execute("SELECT pg_notify(%s, %s)", (self.replies_channel, command_id))

        self.pool.run("store a control reply", store, transaction=True)

    def replies(self, command_id: str, timeout: float,
                limit: int | None = None) -> Iterator[tuple[str, Any]]:
        if self._reply_wake is None:
            self._reply_wake = self.notifications(self.replies_channel)
        wake = self._reply_wake
        sql = self.sql("SELECT n, body FROM {schema}.conveyor_control_replies "
                       "WHERE command_id = %s AND n > %s ORDER BY n")
        deadline = time.monotonic() + timeout
        last, count = 0, 0
        while limit is None or count < limit:
            generation = wake.generation()
            rows = self.pool.run("read control replies", functools.partial(
                _fetch, sql, (command_id, last)), retry=True)
            for n, body in rows:
                last = int(n)
                count += 1
                yield decode_reply(body)
                if limit is not None and count >= limit:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wake.wait(generation, min(POLL, remaining))

    def close(self) -> None:
        if self._reply_wake is not None:
            self._reply_wake.stop()
        self.pool.close()
