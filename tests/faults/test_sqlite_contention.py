"""Case 11: eight processes producing and consuming on one SQLite file, with kill -9.

Four producers and four consumers (``tests/faults/sqlite_actor.py``) commit
as fast as they can while the test SIGKILLs some of them at random moments
(so some die inside a transaction) and starts replacements.  Then:

* no operation failed: no "database is locked", no other error;
* every enqueue that returned was consumed, and nothing is left;
* no message was claimed twice, unless its first claimer was killed (its
  lease ran out) — and none was acknowledged twice;
* ``PRAGMA integrity_check`` says ``ok``, during the run and after it.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from conveyor.brokers import broker_from_url

from ..integration.processes import ROOT, Ledger, wait_for
from .harness import Figures, kill_group, report

PRODUCERS, CONSUMERS, PER_PRODUCER = 4, 4, 1500
CLAIM_LEASE = 2.0
KILLS = 8


class Actors:
    def __init__(self, url: str, ledger: Path, stopfile: Path) -> None:
        self.url, self.ledger, self.stopfile = url, ledger, stopfile
        self.producers: list[subprocess.Popen[bytes]] = []
        self.consumers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "tests.faults.sqlite_actor", args[0], self.url,
               str(self.ledger), *args[1:]]
        return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)

    def produce(self, name: str) -> None:
        self.producers.append(self._spawn("produce", name, str(PER_PRODUCER)))

    def consume(self) -> None:
        self.consumers.append(self._spawn("consume", str(self.stopfile), str(CLAIM_LEASE)))

    def running(self, procs: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
        return [p for p in procs if p.poll() is None]

    def kill_all(self) -> None:
        for proc in [*self.producers, *self.consumers]:
            kill_group(proc)


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.slow
def test_eight_processes_on_one_sqlite_file_with_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    url = f"sqlite:///{path}"
    broker_from_url(url).close()  # the schema exists before anyone races to create it
    ledger = Ledger(tmp_path / "ledger.txt")
    actors = Actors(url, ledger.path, tmp_path / "stop")
    rng = random.Random(11)
    killed_consumers: set[int] = set()
    checks: list[str] = []
    try:
        for index in range(PRODUCERS):
            actors.produce(f"p{index}")
        for _ in range(CONSUMERS):
            actors.consume()
        for kill in range(KILLS):
            time.sleep(rng.uniform(0.2, 0.6))  # the fault's timing: a random moment mid-run
            producers = actors.running(actors.producers)
            if kill % 2 == 0 and producers:
                kill_group(rng.choice(producers))
                actors.produce(f"r{kill}")
            else:
                victim = rng.choice(actors.running(actors.consumers))
                killed_consumers.add(victim.pid)
                kill_group(victim)
                actors.consume()
            checks.append(integrity(path))
        wait_for(lambda: not actors.running(actors.producers), 60, "the producers to finish")
        actors.stopfile.touch()
        wait_for(lambda: _drained(url), 60, "the consumers to drain the queue")
        wait_for(lambda: not actors.running(actors.consumers), 30, "the consumers to stop")
    finally:
        actors.kill_all()

    errors_file = Path(f"{ledger.path}.errors")
    errors = errors_file.read_text() if errors_file.exists() else ""
    assert not errors, f"operations failed:\n{errors[:2000]}"
    assert all(c == "ok" for c in [*checks, integrity(path)]), checks

    acked = {task_id for _, task_id, _, _ in ledger.events("acked")}
    consumed = Counter(task_id for _, task_id, _, _ in ledger.events("ack"))
    claims: dict[str, list[int]] = defaultdict(list)
    for _, task_id, _, pid in ledger.events("claim"):
        claims[task_id].append(pid)
    # A consumer killed between its ack's commit and its "ack" line leaves only
    # "acking": that batch was acked (or is redelivered), not lost.  Nothing else
    # may be missing.
    unlogged = {task_id for _, task_id, _, pid in ledger.events("acking")
                if pid in killed_consumers}
    lost = sorted(acked - set(consumed) - unlogged)
    assert not lost, f"{len(lost)} acknowledged enqueues lost, e.g. {lost[:5]}"
    assert not [i for i, n in consumed.items() if n > 1], "acknowledged twice"
    twice = {i: pids for i, pids in claims.items() if len(pids) > 1}
    wrongly = {i: pids for i, pids in twice.items() if not set(pids[:-1]) <= killed_consumers}
    assert not wrongly, f"claimed twice while the first claimer lived: {list(wrongly.items())[:5]}"
    report(Figures("11 SQLite, 8 processes, kill -9 mid-commit", "sqlite", len(acked), KILLS,
                   len(lost), 0, None,
                   f"0 lock errors, {len(twice)} re-claimed after a killed consumer, "
                   f"integrity ok x{len(checks) + 1}"))


def _drained(url: str) -> bool:
    broker = broker_from_url(url)
    try:
        [stats] = broker.stats(["q"])
        return stats.ready + stats.delayed + stats.inflight == 0
    finally:
        broker.close()
