"""Case 9: two or three beat processes, the leader SIGKILLed twice; each tick runs once.

End to end: beat processes send a one-second tick to a real worker, whose task
writes the tick it was sent for to the ledger.  The leader is killed twice
(a replacement joins each time); afterwards every tick from the first to the
last ran exactly once — none repeated, none skipped — and every message beat
sent completed (guarantee 6).  tests/integration/test_beat.py counts the
queue itself, and freezes a leader with SIGSTOP as well.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.beat import BEAT_LEASE

from ..integration.processes import ROOT, Ledger, wait_for
from .harness import (
    APP,
    Figures,
    Workers,
    assert_nothing_lost,
    kill_group,
    report,
    settled,
    total_queue,
)

BEAT_LEASE_TIMEOUT = 2.0
HOLDER_PID = re.compile(r":(\d+):[0-9a-f]+$")


class Beats:
    def __init__(self, url: str, logs: Path) -> None:
        self.url, self.logs = url, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "CONVEYOR_BROKER_URL": self.url, "PYTHONPATH": str(ROOT),
               "CONVEYOR_BEAT_LEASE_TIMEOUT": str(BEAT_LEASE_TIMEOUT),
               "CONVEYOR_BEAT_MAX_LOOP_INTERVAL": "1", "FAULT_BEAT_INTERVAL": "1"}
        log = open(self.logs / f"beat-{len(self.procs)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", "-A", APP, "beat", "-l", "INFO"],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def leader(self, client: Conveyor, other_than: subprocess.Popen[bytes] | None = None,
               timeout: float = 15) -> subprocess.Popen[bytes]:
        def current() -> subprocess.Popen[bytes] | None:
            holder = client.broker.lease_holder(BEAT_LEASE)
            match = HOLDER_PID.search(holder or "")
            pid = int(match.group(1)) if match else -1
            found = [p for p in self.procs if p.pid == pid and p is not other_than]
            return found[0] if found else None

        wait_for(current, timeout, "a beat leader")
        leader = current()
        assert leader is not None
        return leader

    def stop_all(self) -> None:
        for proc in self.procs:
            kill_group(proc, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                kill_group(proc)


@pytest.fixture
def beats(url: str, tmp_path: Path) -> Iterator[Beats]:
    fleet = Beats(url, tmp_path)
    yield fleet
    fleet.stop_all()


def more_ticks(ledger: Ledger, count: int) -> Callable[[], bool]:
    """A condition: ``count`` more ticks ran than now."""
    seen = len(ledger.events("tick"))
    return lambda: len(ledger.events("tick")) >= seen + count


def ticks_in(ledger: Ledger) -> list[datetime]:
    return [datetime.fromisoformat(t) for _, t, _, _ in ledger.events("tick")]


@pytest.mark.slow
@pytest.mark.parametrize(("url", "running"), [("sqlite", 2), ("redis", 3)], indirect=["url"])
def test_beat_leader_killed_twice_each_tick_runs_once(
        client: Conveyor, workers: Workers, beats: Beats, ledger: Ledger, backend: str,
        running: int) -> None:
    workers.start("-c", "2")
    for _ in range(running):
        beats.start()
    leader = beats.leader(client)
    wait_for(lambda: len(ledger.events("tick")) >= 2, 30, "ticks to run")
    takeovers = []
    for _ in range(2):
        kill_group(leader)
        killed_at = time.monotonic()
        leader = beats.leader(client, other_than=leader)
        takeovers.append(time.monotonic() - killed_at)
        beats.start()
        wait_for(more_ticks(ledger, 2), 15, "the new leader's ticks to run")
    beats.stop_all()

    ids = [task_id for _, task_id, _, _ in ledger.events("start")]
    wait_for(lambda: settled(client.broker, ledger, ids), 30, "every tick task to complete")
    total = total_queue(client.broker, ledger, ids)
    assert_nothing_lost(total)
    ticks = ticks_in(ledger)
    repeated = [t for t, n in Counter(ticks).items() if n > 1]
    assert not repeated, f"ticks that ran twice: {repeated}"
    first, last = min(ticks), max(ticks)
    expected = int((last - first).total_seconds()) + 1
    missing = [first + timedelta(seconds=s) for s in range(expected)
               if first + timedelta(seconds=s) not in set(ticks)]
    assert not missing, f"ticks that never ran: {missing}"
    assert all(t < BEAT_LEASE_TIMEOUT + 2.0 for t in takeovers), takeovers
    report(Figures(f"9 beat x{running}, leader SIGKILLed twice", backend, len(ticks), 2,
                   len(missing), len(repeated), max(takeovers),
                   f"{expected} ticks each run once; beat lease {BEAT_LEASE_TIMEOUT:g}s"))
