"""A fork while another thread is inside SQLite must not hang the child.

The prefork supervisor forks children while its control thread (and an
embedded beat) query SQLite. A fork in the middle of such a call handed the
child SQLite's internal mutexes locked, and the child hung in its first
``sqlite3.connect`` (seen as prefork workers on SQLite that never became
ready). Without ``_sqlite.FORK_GUARD`` about one fork in seventy hung here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from conveyor._sqlite import Database, parse_sqlite_url


def _wait(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
        time.sleep(0.001)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return False


def test_children_forked_beside_a_busy_sqlite_thread_never_hang(tmp_path: Path) -> None:
    path = tmp_path / "guard.db"
    db = Database(parse_sqlite_url(f"sqlite:///{path}"), "forkguard",
                  ("CREATE TABLE IF NOT EXISTS t (a)",), 1)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            db.query(lambda c: c.execute("SELECT count(*) FROM t").fetchone())
            db.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    hung = 0
    try:
        for _ in range(200):
            pid = os.fork()
            if pid == 0:  # the child: what a new prefork child does first
                try:
                    sqlite3.connect(path).execute("SELECT 1")
                finally:
                    os._exit(0)
            hung += not _wait(pid, timeout=3.0)
    finally:
        stop.set()
        thread.join(10)
    assert hung == 0
