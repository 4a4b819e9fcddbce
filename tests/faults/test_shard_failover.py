"""Case 14c: with the queues sharded (``queue_shards=3``), the master of one shard
is SIGKILLed and its replica promoted (issue 21, docs/decisions/0027-queue-shards.md).

The session's cluster (:mod:`tests.redis_cluster`).  A worker consumes two
queues: ``lost-side`` on shard 1 and ``kept-side`` on shard 2, each on a
master of its own (neither is the home slot's, which keeps the results).  A
producer sends to both.  The master of shard 1 is killed.  Then:

* the other shard's queue keeps being served while shard 1 has no master:
  a consumer of several shards passes over the one that fails;
* once the replica is promoted, the worker and the producer carry on against
  it by themselves;
* the ledger: nothing lost but tasks of the killed shard acknowledged in the
  last second before the kill (asynchronous replication), nothing run twice
  but around the kill.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.crc import key_slot

from conveyor import Conveyor
from conveyor._redis_shards import ShardPlan
from conveyor.brokers.redis_sharded import ShardedRedisBroker

from ..integration.processes import Ledger, wait_for
from ..redis_cluster import RedisCluster
from .harness import Figures, Workers, assert_nothing_lost, report, settled, task, total_queue
from .test_half_open import in_flight

SHARDS = 3


def _owner_changed(cluster: RedisCluster, slot: int, old: int) -> bool:
    try:
        return cluster.master_of(slot) != old
    except AssertionError:  # no live node knows the slot yet
        return False


def _queue_on(shard: int, stem: str) -> str:
    plan = ShardPlan(SHARDS)
    return next(f"{stem}-{n}" for n in range(1000) if plan.shard_of(f"{stem}-{n}") == shard)


LOST_SIDE, KEPT_SIDE = _queue_on(1, "lost-side"), _queue_on(2, "kept-side")


@dataclass
class TwoQueueProducer:
    """Sends a short task to each queue in turn, keeping what each accepted."""

    app: Conveyor
    accepted: dict[str, list[str]] = field(
        default_factory=lambda: {LOST_SIDE: [], KEPT_SIDE: []})
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.01):
            for queue, ids in self.accepted.items():
                try:
                    ids.append(self.app.send_task(task("sleep"), [0.02], queue=queue).id)
                except Exception:
                    self.refused += 1


@pytest.mark.slow
def test_one_shard_master_killed_the_other_shard_carries_on(
        redis_cluster: RedisCluster, cluster_url: str, tmp_path: Path) -> None:
    url = f"{cluster_url}&queue_shards={SHARDS}"
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(url, ledger, tmp_path)
    client = Conveyor("producer", broker=url, set_as_current=False)
    broker = client.broker
    assert isinstance(broker, ShardedRedisBroker)
    slots = [key_slot(shard.prefix.encode()) for shard in broker.shards]
    masters = [redis_cluster.master_of(slot) for slot in slots]
    assert len(set(masters)) == SHARDS, masters
    old = masters[1]
    producer = TwoQueueProducer(client)
    thread = threading.Thread(target=producer.run, daemon=True)
    queues = (LOST_SIDE, KEPT_SIDE)
    try:
        worker = workers.start("-c", "2", "-Q", ",".join(queues))
        wait_for(lambda: "ready: pool=" in workers.logs() or worker.poll() is not None, 30,
                 "the worker to start")
        thread.start()
        wait_for(lambda: len(ledger.count("end")) >= 30, 30, "work to flow")

        at_kill = len(ledger.events())
        sent_at_kill = len(producer.accepted[LOST_SIDE])
        redis_cluster.kill(old)
        killed = time.monotonic()
        wait_for(lambda: _owner_changed(redis_cluster, slots[1], old), 30, "a replica promoted")
        promoted = time.monotonic() - killed
        during = ledger.events()[at_kill:]
        kept_ran = {i for kind, i, _, _ in during if kind == "end"} & set(
            producer.accepted[KEPT_SIDE])

        lost_sent = len(producer.accepted[LOST_SIDE])
        wait_for(lambda: len(producer.accepted[LOST_SIDE]) >= lost_sent + 20, 30,
                 "sends to the promoted shard")
        recovery = time.monotonic() - killed
        producer.stop.set()
        thread.join(10)

        ids = [*producer.accepted[LOST_SIDE], *producer.accepted[KEPT_SIDE]]
        on_lost = producer.accepted[LOST_SIDE]
        lost_window = set(on_lost[max(0, sent_at_kill - 50):sent_at_kill + 1])
        with contextlib.suppress(AssertionError):  # the ledger check below says what is missing
            wait_for(lambda: settled(broker, ledger, [i for i in ids if i not in lost_window],
                                     queues), 60, "every accepted task to run")
        total = total_queue(broker, ledger, ids, queues)
        unreplicated = [i for i in total.lost if i in lost_window]
        total.lost = [i for i in total.lost if i not in lost_window]
        held_across = {i for kind, i, _, _ in during if kind == "start"}
        assert_nothing_lost(total, may_repeat=in_flight(ledger, at_kill, settling=250)
                            | held_across)
        assert len(kept_ran) >= 10, (
            f"only {len(kept_ran)} tasks of the other shard ran in the {promoted:.1f}s "
            "the killed shard had no master")
        assert worker.poll() is None, "the worker exited"
        report(Figures("14c Cluster: one shard's master kill -9 (queue_shards=3)", "cluster",
                       len(ids), 1, len(unreplicated), len(total.duplicates), recovery,
                       f"promoted after {promoted:.1f}s; {len(kept_ran)} tasks of the other "
                       f"shard ran meanwhile; {producer.refused} sends refused"))
    finally:
        producer.stop.set()
        workers.stop_all()
        client.close()
        if redis_cluster.procs[old].poll() is not None:
            redis_cluster.restart(old)
