"""Vacuuming the PostgreSQL broker's messages table as fast as it churns.

Every message the broker moves leaves two dead row versions in
``conveyor_messages`` (the one its lease replaced and the one its ack
deleted), plus an index entry or three for each.  Until a VACUUM reclaims
them, new rows go at the end of the table and the indexes hold the old
entries, so the table grows by about 350 bytes per task and reserving slows
down as it wades through them.  Autovacuum looks at a table at most once
per ``autovacuum_naptime`` (one minute by default), which at a few thousand
tasks a second is a few hundred thousand dead rows, and it is often turned
off on test and CI servers, where the table then grows without end.

So the process that settles messages (the one that acknowledges: a
worker's supervisor) counts them and, every ``vacuum_every`` messages
(acknowledged, dead-lettered, requeued or purged), runs ``VACUUM
(SKIP_LOCKED)`` of the table in a thread of its own.  With several workers
each counts its own, so one of them vacuums about every ``vacuum_every``
messages all told: the table holds the dead rows of about that many
messages, whatever autovacuum does.  ``SKIP_LOCKED``
makes a VACUUM that would wait (autovacuum, or another worker, is vacuuming
the table already) skip instead, so no acknowledgement ever waits on one.
Only the table's owner, the database's owner or a superuser may vacuum it;
for any other role this says so once, in a warning, and leaves the table to
autovacuum.  Measured in docs/performance.md (`benchmarks/pg_churn.py`);
the choice is ADR 0019.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from conveyor._postgres import Pool

log = logging.getLogger("conveyor.postgres")

DEFAULT_VACUUM_EVERY = 5_000
# Whether this role may vacuum the table, and whether autovacuum would.
MAY_VACUUM = """
    SELECT pg_has_role(c.relowner, 'USAGE') OR pg_has_role(d.datdba, 'USAGE'),
           current_setting('autovacuum') = 'on'
           AND coalesce(NOT ('autovacuum_enabled=false' = ANY(c.reloptions)), true)
    FROM pg_class c, pg_database d
    WHERE c.oid = to_regclass(%s) AND d.datname = current_database()"""


class Vacuum:
    """Counts settled messages and vacuums ``table`` every ``every`` of them (0: never)."""

    def __init__(self, pool: Pool, table: str, every: int) -> None:
        self._pool = pool
        self._table = table
        self.every = every
        self.runs = 0
        self._pending = 0
        self._allowed: bool | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def settled(self, messages: int) -> None:
        """Note ``messages`` settled; start a VACUUM when enough have gathered."""
        if self.every <= 0 or messages <= 0 or self._allowed is False:
            return
        with self._lock:
            self._pending += messages
            busy = self._thread is not None and self._thread.is_alive()
            if self._pending < self.every or busy:
                return
            self._pending = 0
            self._thread = threading.Thread(target=self._vacuum, name="conveyor-pg-vacuum",
                                            daemon=True)
            self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a VACUUM under way (tests, and ``close``)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _vacuum(self) -> None:
        try:
            if self._allowed is None:
                self._allowed = self._pool.run("check vacuum rights", self._may_vacuum)
            if self._allowed:
                self._pool.run("vacuum", lambda c: c.execute(
                    f"VACUUM (SKIP_LOCKED) {self._table}"), patient=True)
                self.runs += 1
        except Exception as exc:  # a thread of our own: say so, try again later
            log.warning("PostgreSQL broker: VACUUM of %s failed (%s: %s); trying again after "
                        "%d more acknowledgements", self._table, type(exc).__name__,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                        self.every)

    def _may_vacuum(self, conn: Any) -> bool:
        row = conn.execute(MAY_VACUUM, (self._table,)).fetchone()
        allowed, autovacuum = (bool(row[0]), bool(row[1])) if row else (False, False)
        if not allowed:
            log.warning(
                "PostgreSQL broker: role %s may not VACUUM %s (only its owner, the database "
                "owner or a superuser may); %s", conn.info.user, self._table,
                "its dead rows are left to autovacuum" if autovacuum else
                "autovacuum is off for it too, so it will grow with every task: run VACUUM "
                "on it regularly, or let this role own it")
        return allowed
