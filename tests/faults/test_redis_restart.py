"""Case 4: Redis SIGKILLed and restarted mid-run (guarantee 8, and 1 across the restart).

The test runs a Redis of its own (``appendonly yes``, ``appendfsync always``)
on its own port.  A producer thread sends tasks steadily while two workers
run them; Redis is killed with SIGKILL, left down for a while, and started
again on the same data directory.  Then:

* every enqueue that returned an id completed: with ``appendfsync always`` an
  acknowledged write survives the kill;
* while Redis was down every enqueue raised a clear ``BrokerUnavailable``
  naming the server, quickly, and none returned an id;
* producers and workers reconnected by themselves, and no worker process
  crash-looped (the supervisors never exited; children were not respawned in
  a loop);
* a task ran twice only if it was in flight around the outage (its ack could
  not be written, so its lease handed it out again).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import BrokerError

from ..integration.processes import Ledger, wait_for
from .conftest import require_redis_server
from .harness import (
    LEASE,
    Figures,
    Producer,
    RedisServer,
    Workers,
    assert_nothing_lost,
    recover_and_drain,
    report,
    unfinished,
    wait_ready,
)

DOWN_FOR = 2.5  # seconds Redis stays dead


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis_server()
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, durable=True)
    server.start()
    yield server
    server.kill()


@pytest.mark.slow
def test_redis_killed_and_restarted_mid_run(durable_redis: RedisServer, tmp_path: Path) -> None:
    url = durable_redis.url
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(url, ledger, tmp_path)
    client = Conveyor("producer", broker=url, set_as_current=False)
    producer = Producer(client)
    thread = threading.Thread(target=producer.run, daemon=True)
    try:
        first = workers.start("-c", "2")
        second = workers.start("-c", "2")
        wait_ready(workers, first)
        wait_ready(workers, second)
        thread.start()
        wait_for(lambda: len(ledger.count("end")) >= 30, 30, "work to flow")

        ended_at_kill = len(ledger.events("end"))
        durable_redis.kill()
        accepted_before = len(producer.accepted)
        errors_before = len(producer.errors)
        time.sleep(DOWN_FOR)  # the fault itself: Redis stays down this long
        accepted_while_down = len(producer.accepted) - accepted_before
        refused = producer.errors[errors_before:]
        durable_redis.start()
        recovery, ids, total = recover_and_drain(client.broker, ledger, producer, thread,
                                                 time.monotonic(), more=30)
        # A task may repeat only if it was running or acking when Redis died.
        may_repeat = unfinished(ledger, ended_at_kill - 4)
        assert_nothing_lost(total, may_repeat=may_repeat)

        assert refused, "enqueues while Redis was down must fail"
        assert accepted_while_down <= 1, "at most the one in flight at the kill was accepted"
        for error in refused:
            assert isinstance(error, BrokerError), repr(error)
            assert f"Redis at 127.0.0.1:{durable_redis.port} is unavailable" in str(error)
        assert producer.slowest < 6.0, f"an enqueue hung for {producer.slowest:.1f}s"
        for worker in (first, second):
            assert worker.poll() is None, "a worker exited"
        deaths = workers.logs().count("exited with")
        assert deaths == 0, "a worker child died during the outage"
        report(Figures("4 Redis kill -9 + restart (fsync always)", "redis", len(ids), 1,
                       len(total.lost), len(total.duplicates), recovery,
                       f"down {DOWN_FOR:g}s, {len(refused)} sends refused, "
                       f"{deaths} child deaths, lease {LEASE:g}s"))
    finally:
        producer.stop.set()
        workers.stop_all()
        client.close()

