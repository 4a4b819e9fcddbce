"""Cases 13 and 14: the Redis master holding the app's keys killed, a replica promoted
(issue 21), under Sentinel and in a Cluster.

* **Sentinel** (case 13): the session's set (:mod:`tests.redis_sentinel`: a
  master, two replicas, three sentinels), which calls a master down after
  0.5 s during these tests.  The app reaches it through Celery's URL form,
  ``sentinel://h:p/0?master_name=…;sentinel://h2:p2``.
* **Cluster** (case 14): the session's cluster (:mod:`tests.redis_cluster`:
  three masters with a replica each, ``cluster-node-timeout`` 2 s), three of
  its nodes named in a ``redis+cluster://`` URL.  Every key of the app is
  under the hash-tagged prefix, so on one master: that one is killed.

With work flowing, the master is SIGKILLed.  Then:

* a replica is promoted (by the sentinels, or by the other masters' vote),
  and the worker and the producer carry on against it within the failover
  time plus a few seconds, by themselves (each new connection asks the
  sentinels, or the cluster, where the master is now);
* sends made while there was no master raised ``BrokerUnavailable``, quickly;
* the ledger: a task ran twice only around the kill (its ack may not have
  reached a replica, or its 2 s lease lapsed during the failover), and the
  only tasks lost are ones acknowledged in the last second before the kill,
  which asynchronous replication may lose (docs/operations.md, "Redis in
  production"); the figures say how many;
* with ``wait_replicas=1`` (an enqueue returns only once a replica confirmed
  it, ``WAIT``) none is lost: the most up-to-date replica is promoted, and
  has every confirmed write.  In the cluster the promoted master then has no
  replica, so enqueues are refused until the killed node is started again
  and rejoins as its replica; recovery counts from then.

The killed server is started again afterwards as a replica, so the session's
set or cluster is whole for the tests that follow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis.crc import key_slot

from conveyor import Conveyor
from conveyor.exceptions import BrokerError

from ..conftest import REPLICATED_TOPOLOGIES
from ..integration.processes import ROOT, Ledger, wait_for
from ..integration.test_monitor_api import Served
from ..redis_cluster import RedisCluster
from ..redis_sentinel import SentinelSet
from .harness import (
    APP,
    Figures,
    TotalQueue,
    Workers,
    assert_nothing_lost,
    kill_group,
    report,
    settled,
    total_queue,
)
from .test_half_open import in_flight
from .test_redis_restart import Producer


@dataclass
class Master:
    """The master holding the app's keys, in one topology: how to kill it, see it
    replaced, and start it again as a replica."""

    case: str  # "13 Sentinel: master", for the figures
    backend: str
    url: str
    sentinels: SentinelSet | None = None
    cluster: RedisCluster | None = None
    slot: int = 0
    # A cluster master has one replica: with it promoted, none is left until the
    # killed one rejoins (Sentinel keeps a second replica).
    alone_after_failover: bool = False

    def current(self) -> int | None:
        if self.sentinels is not None:
            return self.sentinels.master_port()
        assert self.cluster is not None
        try:
            return self.cluster.master_of(self.slot)
        except AssertionError:  # no live node knows the slot yet
            return None

    def kill(self) -> int:
        port = self.current()
        assert port is not None
        if self.sentinels is not None:
            self.sentinels.kill_master()
        else:
            assert self.cluster is not None
            self.cluster.kill(port)
        return port

    def wait_promoted(self, old: int) -> float:
        """Seconds until another server holds the keys (from the call)."""
        began = time.monotonic()
        wait_for(lambda: self.current() not in (None, old), 30, "a replica promoted")
        return time.monotonic() - began

    def restart(self, port: int) -> None:
        """Start the killed server again; it rejoins as a replica of the new master."""
        if self.sentinels is not None:
            self.sentinels.restart(port)
        else:
            assert self.cluster is not None
            if self.cluster.procs[port].poll() is not None:
                self.cluster.restart(port)

    def is_down(self, port: int) -> bool:
        if self.sentinels is not None:
            return any(s.port == port and s.proc is None for s in self.sentinels.servers)
        assert self.cluster is not None
        return self.cluster.procs[port].poll() is not None


@pytest.fixture(params=REPLICATED_TOPOLOGIES)
def master(request: pytest.FixtureRequest, redis_prefix: str) -> Iterator[Master]:
    if request.param == "sentinel":
        sentinels: SentinelSet = request.getfixturevalue("redis_sentinels")
        url = str(request.getfixturevalue("sentinel_url"))
        with sentinels.fast_failover():
            yield Master("13 Sentinel: master", "sentinel", url, sentinels=sentinels)
        return
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    url = str(request.getfixturevalue("cluster_url"))
    yield Master("14 Cluster: slot master", "cluster", url, cluster=cluster,
                 slot=key_slot(f"{{{redis_prefix}}}".encode()), alone_after_failover=True)


@dataclass
class Run:
    """What the ledger and the producer looked like at the kill, and the figures after."""

    at_kill: int
    sent_at_kill: int
    errors_before: int
    killed: float
    promoted: float = 0.0
    at_promotion: int = 0
    replicated_again: float = 0.0
    recovery: float = 0.0


def _kill_and_recover(master: Master, ledger: Ledger, producer: Producer,
                      wait_replicas: int) -> tuple[Run, int]:
    """Kill the master with work flowing; return once tasks run again."""
    run = Run(len(ledger.events()), len(producer.accepted), len(producer.errors), 0.0)
    old = master.kill()
    run.killed = time.monotonic()
    run.promoted = master.wait_promoted(old)
    run.at_promotion = len(ledger.events())
    if wait_replicas and master.alone_after_failover:
        master.restart(old)  # until then every enqueue is refused, as asked
    run.replicated_again = time.monotonic() - run.killed
    wait_for(lambda: len(producer.accepted) >= run.sent_at_kill + 30, 30, "producing to resume")
    ended = len(ledger.events("end"))
    wait_for(lambda: len(ledger.events("end")) >= ended + 30, 30, "tasks to run again")
    run.recovery = time.monotonic() - run.killed
    return run, old


def _check_the_ledger(client: Conveyor, ledger: Ledger, producer: Producer,
                      run: Run) -> tuple[TotalQueue, list[str]]:
    """The total-queue property, allowing for the failover; returns the total and
    the ids lost from the last second before the kill (acknowledged, not yet
    replicated)."""
    ids = list(producer.accepted)
    lost_window = set(ids[max(0, run.sent_at_kill - 50):run.sent_at_kill + 1])
    wait_for(lambda: settled(client.broker, ledger, [i for i in ids if i not in lost_window]),
             60, "every accepted task to run")
    total = total_queue(client.broker, ledger, ids)
    unreplicated = [i for i in total.lost if i in lost_window]
    total.lost = [i for i in total.lost if i not in lost_window]
    # Held across the failover: longer than the test's 2 s lease, so those
    # leases lapse and the new master hands the messages out again.
    held_across = {i for kind, i, _, _ in ledger.events()[run.at_kill:run.at_promotion]
                   if kind == "start"}
    # Acks are not waited for (wait_replicas covers enqueues only): those of the
    # last seconds before the kill may not have reached a replica either (about
    # 50 tasks a second, two ledger lines each; replication lags further behind
    # on a loaded machine: a fresh-clone CI run on 2 cores saw more than 2.5 s
    # of acks re-run, so the window is 5 s).
    acked_late = in_flight(ledger, run.at_kill, settling=500)
    allowed = acked_late | held_across
    try:
        assert_nothing_lost(total, may_repeat=allowed)
    except AssertionError as exc:
        repeated = [i for i in total.duplicates if i not in allowed]
        raise AssertionError(f"{exc}\n{_where(ledger, run, repeated)}") from None
    return total, unreplicated


def _where(ledger: Ledger, run: Run, ids: list[str], most: int = 20) -> str:
    """Where the ledger lines of tasks that ran twice fall, counted from the kill.

    A first run that ended long before the kill points at replication lagging
    beyond the allowance's window; one that began after the promotion points
    elsewhere.  A failure once left that question open (a single rerun in CI)."""
    lines = ledger.events()
    rows = []
    for task_id in ids[:most]:
        marks = [f"{kind}@{n - run.at_kill:+d} (attempt {attempt}, pid {pid})"
                 for n, (kind, found, attempt, pid) in enumerate(lines) if found == task_id]
        rows.append(f"  {task_id}: {', '.join(marks)}")
    return (f"ledger lines counted from the kill (promotion at "
            f"{run.at_promotion - run.at_kill:+d}, allowance window 500 lines):\n"
            + "\n".join(rows))


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_master_killed_and_replica_promoted(master: Master, tmp_path: Path,
                                            wait_replicas: int) -> None:
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(master.url, ledger, tmp_path)
    client = Conveyor("producer", broker=master.url, set_as_current=False,
                      broker_transport_options={"wait_replicas": wait_replicas})
    producer = Producer(client, interval=0.02)
    thread = threading.Thread(target=producer.run, daemon=True)
    old = master.current()
    try:
        worker = workers.start("-c", "2")
        wait_for(lambda: "ready: pool=" in workers.logs() or worker.poll() is not None, 30,
                 "the worker to start")
        assert worker.poll() is None, workers.logs()[-3000:]
        thread.start()
        wait_for(lambda: len(ledger.count("end")) >= 30, 30, "work to flow")
        run, old = _kill_and_recover(master, ledger, producer, wait_replicas)
        producer.stop.set()
        thread.join(10)
        total, unreplicated = _check_the_ledger(client, ledger, producer, run)

        refused = producer.errors[run.errors_before:]
        for error in refused:
            assert isinstance(error, BrokerError), repr(error)
        assert producer.slowest < 6.0, f"an enqueue hung for {producer.slowest:.1f}s"
        assert run.recovery < run.replicated_again + 5, (
            f"took {run.recovery:.1f}s after a {run.promoted:.1f}s failover "
            f"({run.replicated_again:.1f}s until a replica was back)")
        assert worker.poll() is None, "the worker exited"
        if wait_replicas:
            assert not unreplicated, f"lost although a replica confirmed them: {unreplicated}"
        report(Figures(f"{master.case} kill -9, wait_replicas={wait_replicas}",
                       master.backend, len(total.accepted), 1,
                       len(unreplicated), len(total.duplicates), run.recovery,
                       f"promoted after {run.promoted:.1f}s, replicated again after "
                       f"{run.replicated_again:.1f}s, {len(refused)} sends refused; "
                       f"lost = acknowledged, not yet replicated"))
    finally:
        producer.stop.set()
        workers.stop_all()
        client.close()
        if old is not None and master.is_down(old):
            master.restart(old)


def _worker_seen_since(monitor: httpx.Client, since: float) -> bool:
    """Whether the monitor's worker list shows a heartbeat sent after ``since``
    (wall clock), read through its HTTP API as an operator's page would."""
    try:
        reply = monitor.get("/api/workers")
    except httpx.HTTPError:
        return False
    if reply.status_code != 200:
        return False
    now = time.time()
    return any(w["online"] and now - w["last_seen"] > since for w in reply.json()["workers"])


@pytest.mark.slow
def test_beat_carries_on_after_a_failover(master: Master, tmp_path: Path) -> None:
    """Beat (its leader lease and run history on Redis) sends ticks again after the
    master is killed and a replica promoted, without being restarted; the monitor,
    started before the kill, shows the worker's heartbeats from the new master."""
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(master.url, ledger, tmp_path)
    env = {**os.environ, "CONVEYOR_BROKER_URL": master.url, "PYTHONPATH": str(ROOT),
           "LEDGER": str(ledger.path), "CONVEYOR_BEAT_LEASE_TIMEOUT": "2",
           "CONVEYOR_BEAT_MAX_LOOP_INTERVAL": "1", "FAULT_BEAT_INTERVAL": "0.5"}
    with open(tmp_path / "beat.log", "ab") as log:
        beat = subprocess.Popen([sys.executable, "-m", "conveyor", "-A", APP, "beat", "-l", "INFO"],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    old = master.current()
    viewer = Conveyor("monitor", broker=master.url, set_as_current=False)
    served = Served(viewer)
    monitor = served.__enter__()
    try:
        workers.start("-c", "1")
        wait_for(lambda: len(ledger.events("tick")) >= 3, 30, "ticks to flow")
        # The worker's first heartbeat can reach the monitor after beat's third tick
        # on a loaded machine (a CI run failed here with an empty list): wait for it.
        wait_for(lambda: _worker_seen_since(monitor, 0.0), 30,
                 "the monitor to show the worker before the failover")
        old = master.kill()
        killed_at = time.time()
        killed = time.monotonic()
        promoted = master.wait_promoted(old)
        ticks = len(ledger.events("tick"))
        wait_for(lambda: len(ledger.events("tick")) >= ticks + 3, promoted + 15,
                 "ticks after the failover")
        recovery = time.monotonic() - killed
        assert beat.poll() is None, (tmp_path / "beat.log").read_text()[-3000:]
        # Ticks every 0.5 s; beat's 2 s leader lease may lapse during the failover.
        assert recovery < promoted + 5, f"ticks resumed {recovery:.1f}s after the kill"
        wait_for(lambda: _worker_seen_since(monitor, killed_at), 10,
                 "the monitor to show a heartbeat sent after the failover")
        report(Figures(f"{master.case[:2]}b {master.backend}: beat across a failover",
                       master.backend, len(ledger.events("tick")), 1, 0, 0, recovery,
                       f"promoted after {promoted:.1f}s; the monitor followed"))
    finally:
        served.__exit__(None, None, None)
        viewer.close()
        kill_group(beat)
        workers.stop_all()
        if old is not None and master.is_down(old):
            master.restart(old)
