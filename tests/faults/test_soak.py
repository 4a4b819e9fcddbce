"""Case 12: the soak — random kills and restarts for minutes, then count: lost = 0.

Runs only with ``--soak`` (``make soak``); not in CI.  For each backend,
``CONVEYOR_SOAK_SECONDS`` (default 300, so ten minutes for both) of:

* a producer sending a steady mix of short tasks and delayed ones;
* three prefork workers, and every few seconds a random fault: SIGKILL a
  whole worker (and start another), SIGKILL one child, SIGSTOP a worker past
  its lease and SIGCONT it, and on Redis SIGKILL the server itself
  (``appendfsync always``) and restart it.

At the end the producer stops, the queue drains, and the total-queue check
runs: every accepted enqueue completed, nothing is left, and a task ran
twice only if a fault hit the process holding it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import BrokerError

from ..integration.processes import Ledger, children_of, wait_for
from .harness import (
    LEASE,
    Figures,
    RedisServer,
    Workers,
    assert_nothing_lost,
    kill_group,
    report,
    settled,
    task,
    total_queue,
    unfinished,
)

SECONDS = float(os.environ.get("CONVEYOR_SOAK_SECONDS", "300"))
WORKERS = 3


class Soak:
    def __init__(self, client: Conveyor, workers: Workers, ledger: Ledger,
                 redis: RedisServer | None, rng: random.Random) -> None:
        self.client, self.workers, self.ledger = client, workers, ledger
        self.redis, self.rng = redis, rng
        self.accepted: list[str] = []
        self.refused = 0
        self.may_repeat: set[str] = set()
        self.faults: dict[str, int] = {}
        self.stop = threading.Event()
        self.pool = [self.start_worker() for _ in range(WORKERS)]

    def start_worker(self) -> subprocess.Popen[bytes]:
        return self.workers.start("-c", "3", "--prefetch-multiplier", "4")

    def produce(self) -> None:
        while not self.stop.wait(0.01):
            countdown = self.rng.uniform(0.5, 3) if self.rng.random() < 0.1 else None
            try:
                result = self.client.send_task(task("sleep"), [self.rng.uniform(0, 0.3)],
                                               countdown=countdown)
                self.accepted.append(result.id)
            except BrokerError:
                self.refused += 1  # only while Redis is down; the producer carries on

    def _pids(self, proc: subprocess.Popen[bytes]) -> set[int]:
        return {proc.pid, *children_of(proc.pid)}

    def _hit(self, pids: set[int]) -> None:
        """Tasks the hit processes had started may run again."""
        self.may_repeat |= {t for _, t, _, pid in self.ledger.events("start") if pid in pids}

    def kill_worker(self) -> None:
        victim = self.rng.choice(self.pool)
        pids = self._pids(victim)
        kill_group(victim)
        self._hit(pids)
        self.pool[self.pool.index(victim)] = self.start_worker()

    def kill_child(self) -> None:
        kids = children_of(self.rng.choice(self.pool).pid)
        if kids:
            victim = self.rng.choice(kids)
            os.kill(victim, signal.SIGKILL)
            self._hit({victim})

    def pause_worker(self) -> None:
        victim = self.rng.choice(self.pool)
        pids = self._pids(victim)
        settled_ends = len(self.ledger.events("end")) - 3 * WORKERS * 4
        kill_group(victim, signal.SIGSTOP)
        time.sleep(LEASE * 1.5)  # the fault itself: frozen past its lease
        self._hit(pids)
        if self.redis is None:
            # On SQLite a process frozen inside a write transaction holds the
            # file's lock: nobody renews, so every worker's leases may lapse.
            self.may_repeat |= unfinished(self.ledger, settled_ends)
        kill_group(victim, signal.SIGCONT)

    def restart_redis(self) -> None:
        assert self.redis is not None
        settled_ends = len(self.ledger.events("end")) - 3 * WORKERS * 4
        self.redis.kill()
        time.sleep(self.rng.uniform(0.5, 3))  # the fault itself: Redis stays down
        self.redis.start()
        self.may_repeat |= unfinished(self.ledger, settled_ends)

    def faults_for(self) -> list[Callable[[], None]]:
        chosen = [self.kill_worker, self.kill_child, self.pause_worker]
        return [*chosen, self.restart_redis] if self.redis is not None else chosen

    def run(self, seconds: float) -> None:
        producer = threading.Thread(target=self.produce, daemon=True)
        producer.start()
        ends = time.monotonic() + seconds
        try:
            while time.monotonic() < ends:
                time.sleep(self.rng.uniform(2, 8))  # the gap between faults
                fault = self.rng.choice(self.faults_for())
                fault()
                self.faults[fault.__name__] = self.faults.get(fault.__name__, 0) + 1
        finally:
            self.stop.set()
            producer.join(30)


@pytest.fixture
def soak_redis(tmp_path: Path) -> Iterator[RedisServer]:
    from .conftest import require_redis_server

    require_redis_server()
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, durable=True)
    server.start()
    yield server
    server.kill()


@pytest.mark.soak
@pytest.mark.timeout(int(SECONDS) + 600)
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_soak_with_random_kills_and_restarts(kind: str, tmp_path: Path,
                                             request: pytest.FixtureRequest) -> None:
    redis = request.getfixturevalue("soak_redis") if kind == "redis" else None
    url = redis.url if redis is not None else f"sqlite:///{tmp_path / 'broker.db'}"
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(url, ledger, tmp_path)
    client = Conveyor("soak-producer", broker=url, set_as_current=False)
    soak = Soak(client, workers, ledger, redis, random.Random(12))
    try:
        soak.run(SECONDS)
        wait_for(lambda: settled(client.broker, ledger, soak.accepted), 300, "the queue to drain")
        total = total_queue(client.broker, ledger, soak.accepted)
        assert_nothing_lost(total, may_repeat=soak.may_repeat)
        faults = sum(soak.faults.values())
        report(Figures(f"12 soak {SECONDS:g}s", kind, len(soak.accepted), faults,
                       len(total.lost), len(total.duplicates), None,
                       ", ".join(f"{k} x{v}" for k, v in sorted(soak.faults.items()))
                       + f", {soak.refused} sends refused while Redis was down"))
    finally:
        workers.stop_all()
        client.close()
