"""The control channel in the broker's SQLite file: two tables, polled.

SQLite has no notifications, so a worker's control thread looks for new
commands every :data:`POLL` seconds with one query on the primary key (a
range scan past the last row it saw: no full scan, whatever the history).

Schema (beside the broker's tables, in the same file)::

    conveyor_control           one row per broadcast command
      seq        INTEGER PRIMARY KEY   publication order; a listener starts at the
                                       current maximum and reads rows past it
      body       TEXT                  the command as JSON (base.Command)
      expires_at REAL                  deleted after this (REPLY_TTL), by publish

    conveyor_control_replies   one row per worker answer
      n          INTEGER PRIMARY KEY
      command_id TEXT                  index conveyor_control_replies_by_command
      body       TEXT                  JSON [node, reply]
      expires_at REAL                  deleted after this, by publish

A sender polls the replies of its command id every :data:`REPLY_POLL`
seconds until its timeout or until it has as many as it expects.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from sqlite3 import Connection
from typing import Any

from conveyor._sqlite import Database, parse_sqlite_url
from conveyor.control.base import (
    REPLY_TTL,
    Command,
    ControlChannel,
    Listener,
    decode_reply,
    encode_reply,
    parse_commands,
)

POLL = 0.2  # seconds between a worker's looks for new commands
REPLY_POLL = 0.05  # seconds between a sender's looks for replies
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS conveyor_control (
        seq INTEGER PRIMARY KEY, body TEXT NOT NULL, expires_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS conveyor_control_replies (
        n INTEGER PRIMARY KEY, command_id TEXT NOT NULL, body TEXT NOT NULL,
        expires_at REAL NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS conveyor_control_replies_by_command
        ON conveyor_control_replies (command_id, n)""",
)
SCHEMA_VERSION = 1
_SQLITE_OPTIONS = ("synchronous", "busy_timeout")


def _replies_after(command_id: str, after: int, conn: Connection) -> list[Any]:
    return conn.execute("SELECT n, body FROM conveyor_control_replies WHERE command_id = ? "
                        "AND n > ? ORDER BY n", (command_id, after)).fetchall()


class SQLiteListener(Listener):
    def __init__(self, db: Database) -> None:
        self._db = db
        row = db.query(lambda c: c.execute(
            "SELECT coalesce(max(seq), 0) FROM conveyor_control").fetchone())
        self._last = int(row[0])

    def receive(self, timeout: float) -> list[Command]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self._db.query(lambda c: c.execute(
                "SELECT seq, body FROM conveyor_control WHERE seq > ? ORDER BY seq",
                (self._last,)).fetchall())
            if rows:
                self._last = int(rows[-1][0])
                return parse_commands([body for _, body in rows])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(POLL, remaining))


class SQLiteChannel(ControlChannel):
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        opts = {k: v for k, v in (options or {}).items() if k in _SQLITE_OPTIONS}
        self._db = Database(parse_sqlite_url(url, **opts), "control", SCHEMA, SCHEMA_VERSION)

    def publish(self, command: Command) -> None:
        now = time.time()

        def store(conn: Connection) -> None:
            conn.execute("DELETE FROM conveyor_control WHERE expires_at < ?", (now,))
            conn.execute("DELETE FROM conveyor_control_replies WHERE expires_at < ?", (now,))
            conn.execute("INSERT INTO conveyor_control (body, expires_at) VALUES (?, ?)",
                         (command.encode(), now + REPLY_TTL))

        self._db.write(store)

    def listen(self) -> Listener:
        return SQLiteListener(self._db)

    def reply(self, command_id: str, node: str, body: Any) -> None:
        row = (command_id, encode_reply(node, body), time.time() + REPLY_TTL)
        self._db.write(lambda c: c.execute(
            "INSERT INTO conveyor_control_replies (command_id, body, expires_at) "
            "VALUES (?, ?, ?)", row))

    def replies(self, command_id: str, timeout: float,
                limit: int | None = None) -> Iterator[tuple[str, Any]]:
        deadline = time.monotonic() + timeout
        last, count = 0, 0
        while limit is None or count < limit:
            rows = self._db.query(functools.partial(_replies_after, command_id, last))
            for n, body in rows:
                last = int(n)
                count += 1
                yield decode_reply(body)
                if limit is not None and count >= limit:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(REPLY_POLL, remaining))

    def close(self) -> None:
        self._db.close()
