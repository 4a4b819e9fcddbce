"""Case 14: the Redis Cluster master that owns the app's slot killed, its replica
promoted (issue 21).

The session's cluster (:mod:`tests.redis_cluster`: three masters with a
replica each, ``cluster-node-timeout`` 1 s).  A worker and a producer reach it
by ``redis+cluster://`` with three of the nodes named; every key of the app is
under the hash-tagged prefix, so on one master.  With work flowing, that
master is SIGKILLed.  Then, as for Sentinel (case 13,
``test_sentinel_failover.py``):

* its replica is promoted by the other masters' vote, and the worker and the
  producer carry on against it within the failover time plus a few seconds,
  by themselves (each new connection asks the cluster who owns the slot);
* sends made while the slot had no master raised ``BrokerUnavailable``, quickly;
* the ledger: a task ran twice only around the kill, and the only tasks lost
  are ones acknowledged in the last second before the kill, which Redis's
  asynchronous replication may lose;
* with ``wait_replicas=1`` (``WAIT`` after each enqueue) none is lost: the only
  replica, the one promoted, confirmed every accepted enqueue.  The promoted
  master then has no replica, so enqueues are refused until the killed node
  is started again and rejoins as its replica; recovery counts from then.

The killed node is started again afterwards and rejoins as a replica, so the
session's cluster is whole for the tests that follow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from redis.crc import key_slot

from conveyor import Conveyor
from conveyor.exceptions import BrokerError

from ..integration.processes import ROOT, Ledger, wait_for
from ..redis_cluster import RedisCluster
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
from .test_half_open import in_flight
from .test_redis_restart import Producer


def _owner_changed(cluster: RedisCluster, slot: int, old: int) -> bool:
    try:
        return cluster.master_of(slot) != old
    except AssertionError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_slot_master_killed_and_replica_promoted(redis_cluster: RedisCluster, cluster_url: str,
                                                 redis_prefix: str, tmp_path: Path,
                                                 wait_replicas: int) -> None:
    slot = key_slot(f"{{{redis_prefix}}}".encode())
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(cluster_url, ledger, tmp_path)
    client = Conveyor("producer", broker=cluster_url, set_as_current=False,
                      broker_transport_options={"wait_replicas": wait_replicas})
    producer = Producer(client, interval=0.02)
    thread = threading.Thread(target=producer.run, daemon=True)
    old = redis_cluster.master_of(slot)
    try:
        worker = workers.start("-c", "2")
        wait_for(lambda: "ready: pool=" in workers.logs() or worker.poll() is not None, 30,
                 "the worker to start")
        assert worker.poll() is None, workers.logs()[-3000:]
        thread.start()
        wait_for(lambda: len(ledger.count("end")) >= 30, 30, "work to flow")

        at_kill = len(ledger.events())
        sent_at_kill = len(producer.accepted)
        errors_before = len(producer.errors)
        redis_cluster.kill(old)
        killed = time.monotonic()
        wait_for(lambda: _owner_changed(redis_cluster, slot, old), 30, "a replica promoted")
        promoted = time.monotonic() - killed
        at_promotion = len(ledger.events())
        if wait_replicas:
            # The promoted master has no replica of its own until the killed node
            # rejoins as one: until then every enqueue is refused, as asked.
            redis_cluster.restart(old)
        replicated_again = time.monotonic() - killed
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
        # Held across the failover (longer than the 2 s lease): handed out again.
        held_across = {i for kind, i, _, _ in ledger.events()[at_kill:at_promotion]
                       if kind == "start"}
        # Acks are not waited for: those just before the kill may not have been replicated.
        acked_late = in_flight(ledger, at_kill, settling=250)
        assert_nothing_lost(total, may_repeat=acked_late | held_across)

        refused = producer.errors[errors_before:]
        for error in refused:
            assert isinstance(error, BrokerError), repr(error)
        assert producer.slowest < 6.0, f"an enqueue hung for {producer.slowest:.1f}s"
        assert recovery < replicated_again + 5, (
            f"took {recovery:.1f}s after a {promoted:.1f}s failover "
            f"({replicated_again:.1f}s until a replica was back)")
        assert worker.poll() is None, "the worker exited"
        if wait_replicas:
            assert not unreplicated, f"lost although a replica confirmed them: {unreplicated}"
        report(Figures(f"14 Cluster: slot master kill -9, wait_replicas={wait_replicas}",
                       "cluster", len(ids), 1,
                       len(unreplicated), len(total.duplicates), recovery,
                       f"promoted after {promoted:.1f}s, replicated again after "
                       f"{replicated_again:.1f}s, {len(refused)} sends refused; "
                       f"lost = acknowledged, not yet replicated"))
    finally:
        producer.stop.set()
        workers.stop_all()
        client.close()
        if redis_cluster.procs[old].poll() is not None:
            redis_cluster.restart(old)


@pytest.mark.slow
def test_beat_carries_on_after_a_cluster_failover(redis_cluster: RedisCluster, cluster_url: str,
                                                  redis_prefix: str, tmp_path: Path) -> None:
    """Beat (its leader lease and run history on the slot's master) sends ticks again
    after that master is killed and its replica promoted, without a restart."""
    slot = key_slot(f"{{{redis_prefix}}}".encode())
    old = redis_cluster.master_of(slot)
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(cluster_url, ledger, tmp_path)
    env = {**os.environ, "CONVEYOR_BROKER_URL": cluster_url, "PYTHONPATH": str(ROOT),
           "LEDGER": str(ledger.path), "CONVEYOR_BEAT_LEASE_TIMEOUT": "2",
           "CONVEYOR_BEAT_MAX_LOOP_INTERVAL": "1", "FAULT_BEAT_INTERVAL": "0.5"}
    with open(tmp_path / "beat.log", "ab") as log:
        beat = subprocess.Popen([sys.executable, "-m", "conveyor", "-A", APP, "beat", "-l", "INFO"],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        workers.start("-c", "1")
        wait_for(lambda: len(ledger.events("tick")) >= 3, 30, "ticks to flow")
        redis_cluster.kill(old)
        killed = time.monotonic()
        wait_for(lambda: _owner_changed(redis_cluster, slot, old), 30, "a replica promoted")
        promoted = time.monotonic() - killed
        ticks = len(ledger.events("tick"))
        wait_for(lambda: len(ledger.events("tick")) >= ticks + 3, promoted + 15,
                 "ticks after the failover")
        recovery = time.monotonic() - killed
        assert beat.poll() is None, (tmp_path / "beat.log").read_text()[-3000:]
        # Ticks every 0.5 s; beat's 2 s leader lease may lapse during the failover.
        assert recovery < promoted + 5, f"ticks resumed {recovery:.1f}s after the kill"
        report(Figures("14b Cluster: beat across a failover", "cluster",
                       len(ledger.events("tick")), 1, 0, 0, recovery,
                       f"promoted after {promoted:.1f}s"))
    finally:
        kill_group(beat)
        workers.stop_all()
        if redis_cluster.procs[old].poll() is not None:
            redis_cluster.restart(old)
