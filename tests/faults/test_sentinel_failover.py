"""Case 13: the Redis master killed under Sentinel, a replica promoted (issue 21).

A master, two replicas and three sentinels run on free ports
(:mod:`tests.faults.sentinels`, ``down-after-milliseconds`` 500).  A worker
and a producer reach Redis through Celery's URL form
(``sentinel://h:p;sentinel://h2:p2/0`` with ``master_name`` in
``broker_transport_options``, as in
``/work/ref/kombu/kombu/transport/redis.py``, ``SentinelChannel``).  With work
flowing, the master is SIGKILLed.  Then:

* the sentinels promote a replica, and the worker and the producer carry on
  against it within the failover time plus a few seconds, by themselves;
* sends made while there was no master raised ``BrokerUnavailable``, quickly;
* the ledger: a task ran twice only around the kill (its ack may not have
  reached a replica, or its 2 s lease lapsed during the failover), and the
  only tasks lost are ones acknowledged in the last second before the kill,
  which asynchronous replication may lose
  (docs/operations.md, "Redis in production"); the figures say how many;
* with ``wait_replicas=1`` (an enqueue returns only once a replica confirmed
  it, ``WAIT``) none is lost: the sentinels promote the most up-to-date
  replica, which has every confirmed write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import BrokerError

from ..integration.processes import ROOT, Ledger, wait_for
from .conftest import require_redis_server
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
from .sentinels import MASTER_NAME, SentinelSet
from .test_half_open import in_flight
from .test_redis_restart import Producer

OPTIONS = {"master_name": MASTER_NAME}


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    require_redis_server()
    started = SentinelSet(tmp_path / "redis")
    try:
        started.start()
        yield started
    finally:
        started.stop()


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_master_killed_and_replica_promoted(sentinels: SentinelSet, tmp_path: Path,
                                            wait_replicas: int) -> None:
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(sentinels.url, ledger, tmp_path)
    client = Conveyor("producer", broker=sentinels.url, set_as_current=False,
                      broker_transport_options={**OPTIONS, "wait_replicas": wait_replicas})
    producer = Producer(client, interval=0.02)
    thread = threading.Thread(target=producer.run, daemon=True)
    try:
        worker = workers.start("-c", "2", broker_transport_options=json.dumps(OPTIONS))
        wait_for(lambda: "ready: pool=" in workers.logs() or worker.poll() is not None, 30,
                 "the worker to start")
        assert worker.poll() is None, workers.logs()[-3000:]
        thread.start()
        wait_for(lambda: len(ledger.count("end")) >= 30, 30, "work to flow")

        at_kill = len(ledger.events())
        sent_at_kill = len(producer.accepted)
        errors_before = len(producer.errors)
        old = sentinels.kill_master()
        killed = time.monotonic()
        wait_for(lambda: sentinels.master_port() not in (None, old), 30, "a replica promoted")
        promoted = time.monotonic() - killed
        at_promotion = len(ledger.events())
        wait_for(lambda: len(producer.accepted) >= sent_at_kill + 30, 30, "producing to resume")
        ended = len(ledger.events("end"))
        wait_for(lambda: len(ledger.events("end")) >= ended + 30, 30, "tasks to run again")
        recovery = time.monotonic() - killed
        producer.stop.set()
        thread.join(10)

        ids = list(producer.accepted)
        lost_window = set(ids[max(0, sent_at_kill - 50):sent_at_kill + 1])  # the last second
        wait_for(lambda: settled(client.broker, ledger, [i for i in ids if i not in lost_window]),
                 60, "every accepted task to run")
        total = total_queue(client.broker, ledger, ids)
        unreplicated = [i for i in total.lost if i in lost_window]
        total.lost = [i for i in total.lost if i not in lost_window]
        # Held across the failover: longer than the test's 2 s lease, so those
        # leases lapse and the new master hands the messages out again.
        held_across = {i for kind, i, _, _ in ledger.events()[at_kill:at_promotion]
                       if kind == "start"}
        # Acks are not waited for (wait_replicas covers enqueues only): those of
        # the last seconds before the kill may not have reached a replica either
        # (about 50 tasks a second, two ledger lines each; replication lags
        # further behind on a loaded machine).
        acked_late = in_flight(ledger, at_kill, settling=250)
        assert_nothing_lost(total, may_repeat=acked_late | held_across)

        refused = producer.errors[errors_before:]
        for error in refused:
            assert isinstance(error, BrokerError), repr(error)
        assert producer.slowest < 6.0, f"an enqueue hung for {producer.slowest:.1f}s"
        assert recovery < promoted + 5, f"took {recovery:.1f}s after a {promoted:.1f}s failover"
        assert worker.poll() is None, "the worker exited"
        if wait_replicas:
            assert not unreplicated, f"lost although a replica confirmed them: {unreplicated}"
        report(Figures(f"13 Sentinel: master kill -9, wait_replicas={wait_replicas}",
                       "sentinel", len(ids), 1,
                       len(unreplicated), len(total.duplicates), recovery,
                       f"promoted after {promoted:.1f}s, {len(refused)} sends refused; "
                       f"lost = acknowledged, not yet replicated"))
    finally:
        producer.stop.set()
        workers.stop_all()
        client.close()


@pytest.mark.slow
def test_beat_carries_on_after_a_failover(sentinels: SentinelSet, tmp_path: Path) -> None:
    """Beat (its leader lease and run history on Redis) sends ticks again after the
    master is killed and a replica promoted, without being restarted."""
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(sentinels.url, ledger, tmp_path)
    env = {**os.environ, "CONVEYOR_BROKER_URL": sentinels.url, "PYTHONPATH": str(ROOT),
           "CONVEYOR_BROKER_TRANSPORT_OPTIONS": json.dumps(OPTIONS), "LEDGER": str(ledger.path),
           "CONVEYOR_BEAT_LEASE_TIMEOUT": "2", "CONVEYOR_BEAT_MAX_LOOP_INTERVAL": "1",
           "FAULT_BEAT_INTERVAL": "0.5"}
    with open(tmp_path / "beat.log", "ab") as log:
        beat = subprocess.Popen([sys.executable, "-m", "conveyor", "-A", APP, "beat", "-l", "INFO"],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        workers.start("-c", "1", broker_transport_options=json.dumps(OPTIONS))
        wait_for(lambda: len(ledger.events("tick")) >= 3, 30, "ticks to flow")
        old = sentinels.kill_master()
        killed = time.monotonic()
        wait_for(lambda: sentinels.master_port() not in (None, old), 30, "a replica promoted")
        promoted = time.monotonic() - killed
        ticks = len(ledger.events("tick"))
        wait_for(lambda: len(ledger.events("tick")) >= ticks + 3, promoted + 15,
                 "ticks after the failover")
        recovery = time.monotonic() - killed
        assert beat.poll() is None, (tmp_path / "beat.log").read_text()[-3000:]
        # Ticks every 0.5 s; beat's 2 s leader lease may lapse during the failover.
        assert recovery < promoted + 5, f"ticks resumed {recovery:.1f}s after the kill"
        report(Figures("13b Sentinel: beat across a failover", "sentinel",
                       len(ledger.events("tick")), 1, 0, 0, recovery,
                       f"promoted after {promoted:.1f}s"))
    finally:
        kill_group(beat)
        workers.stop_all()
