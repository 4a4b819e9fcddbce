"""How one app's throughput scales with the masters of a Redis Cluster (``queue_shards``).

    .venv/bin/python -m benchmarks.cluster_scaling [--tasks 3000] [--procs 4] [--queues 12]

For 1, 2 and 3 masters (no replicas) it starts a local cluster of its own on
free ports (``tests/redis_cluster.py``), shards the app's queues over as
many shards as there are masters (``queue_shard_map``: queue ``i`` on shard
``i mod N``), and runs ``--procs`` client processes.  Each first enqueues
``--tasks`` messages one by one over all the queues, then, after every
process has, reserves and acks them ten at a time, listing the queues from
an offset of its own so the processes start on different shards.  Then the
same on 3 masters without sharding, the layout of ADR 0026.

Reported per layout: tasks per second (enqueue + reserve + ack, wall clock
of both phases), Redis CPU per task (``used_cpu_sys`` + ``used_cpu_user``
deltas summed over the masters), the busiest master's CPU seconds, and the
throughput that master would cap the app at if Redis were the bottleneck
(tasks / its CPU seconds).  On a small machine the client processes use the
cores, so the tasks/s column stays flat; the last two columns are what
scales with the masters.  Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from conveyor.brokers import Envelope, broker_from_url
from tests.integration.processes import wait_for
from tests.redis_cluster import RedisCluster

BODY = b'{"task":"add","args":[1,2],"kwargs":{}}' * 3
PREFIX = "bench"


@dataclass
class Layout:
    masters: int
    shards: int  # 1: unsharded, every queue on the home slot


class SmallCluster(RedisCluster):
    """Masters only, joined by hand: ``redis-cli --cluster create`` wants three or more.

    Slots are split into equal runs in port order, as ``redis-cli`` does.
    """

    def start(self) -> None:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            wait_for(lambda p=port: self._answers(p), 15, f"cluster node {port}")
        count = len(self.ports)
        for i, port in enumerate(self.ports):
            client = redis.Redis(port=port)
            first, last = i * 16384 // count, (i + 1) * 16384 // count - 1
            client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
            if i:
                client.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
            client.close()
        wait_for(self.healthy, 30, "the cluster to agree on every slot")


def _options(layout: Layout, queues: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {"prefix": PREFIX}
    if layout.shards > 1:
        options["queue_shards"] = layout.shards
        options["queue_shard_map"] = {q: i % layout.shards for i, q in enumerate(queues)}
    return options


def _client(url: str, options: dict[str, Any], index: int, queues: list[str], tasks: int,
            barrier: Any, out: Any) -> None:
    broker = broker_from_url(url, options)
    began = time.perf_counter()
    for n in range(tasks):
        queue = queues[(index + n) % len(queues)]
        broker.enqueue(Envelope(id=uuid.uuid4().hex, queue=queue, body=BODY))
    barrier.wait()
    order = queues[index:] + queues[:index]  # process k asks shard k mod N first
    done = 0
    while True:
        got = broker.reserve(order, 10, lease=60, timeout=0)
        if not got:
            break
        broker.ack(got)
        done += len(got)
    out.put((done, time.perf_counter() - began))
    broker.close()


def _cpu(port: int) -> float:
    client = redis.Redis(port=port)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def run(layout: Layout, procs: int, tasks: int, queues: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        cluster = SmallCluster(Path(directory), masters=layout.masters, replicas=0)
        try:
            cluster.start()
            url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster.ports) + "/0"
            return _measure(cluster, url, _options(layout, queues), procs, tasks, queues)
        finally:
            cluster.stop()


def _measure(cluster: RedisCluster, url: str, options: dict[str, Any], procs: int,
             tasks: int, queues: list[str]) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    before = {port: _cpu(port) for port in cluster.ports}
    started = time.perf_counter()
    children = [ctx.Process(target=_client, args=(url, options, i, queues, tasks, barrier, out))
                for i in range(procs)]
    for child in children:
        child.start()
    results = [out.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    wall = time.perf_counter() - started
    spent = {port: _cpu(port) - before[port] for port in cluster.ports}
    done = sum(count for count, _ in results)
    busiest = max(spent.values())
    return {"tasks": done, "wall": wall, "rate": done / max(r for _, r in results),
            "cpu_per_task_us": sum(spent.values()) / done * 1e6, "busiest": busiest,
            "ceiling": done / busiest, "spread": " / ".join(f"{s:.2f}" for s in spent.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=3000, help="messages per process")
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--queues", type=int, default=12)
    args = parser.parse_args()
    queues = [f"q{i}" for i in range(args.queues)]
    layouts = [Layout(1, 1), Layout(2, 2), Layout(3, 3), Layout(3, 1)]
    print(f"{args.procs} processes x {args.tasks} tasks over {args.queues} queues\n")
    print("| masters | queue_shards | tasks/s | Redis CPU/task | CPU-s per master | "
          "busiest master | Redis-bound ceiling |")
    print("|---|---|---|---|---|---|---|")
    for layout in layouts:
        r = run(layout, args.procs, args.tasks, queues)
        shards = str(layout.shards) if layout.shards > 1 else "off"
        print(f"| {layout.masters} | {shards} | {r['rate']:,.0f} | {r['cpu_per_task_us']:.0f} µs "
              f"| {r['spread']} | {r['busiest']:.2f} s | {r['ceiling']:,.0f} tasks/s |",
              flush=True)


if __name__ == "__main__":
    main()
