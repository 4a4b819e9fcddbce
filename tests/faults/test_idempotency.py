"""Case 8: 1,000 concurrent enqueues with one idempotency key make exactly one task.

Eight producer processes of five threads each send the same call with the
same key at once (a barrier lines them up); every call must return the same
task id, the broker must hold one message, and the task must run once.
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from conveyor import Conveyor

from ..integration.processes import Ledger, wait_for
from .harness import Figures, Workers, assert_nothing_lost, report, settled, task, total_queue

PROCESSES, THREADS, SENDS = 8, 5, 25  # 8 * 5 * 25 = 1,000 enqueues
KEY = "order-42-confirmation"


def produce(url: str, barrier: Barrier, out: Queue[list[str]]) -> None:
    app = Conveyor("producer", broker=url, set_as_current=False)
    ids: list[str] = []
    lock = threading.Lock()

    def sender() -> None:
        got = [app.send_task(task("sleep"), [0], idempotency_key=KEY).id for _ in range(SENDS)]
        with lock:
            ids.extend(got)

    threads = [threading.Thread(target=sender) for _ in range(THREADS)]
    barrier.wait(30)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(ids)


def test_a_thousand_concurrent_enqueues_with_one_key_make_one_task(
        url: str, client: Conveyor, workers: Workers, ledger: Ledger, backend: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    out = ctx.Queue()
    procs = [ctx.Process(target=produce, args=(url, barrier, out)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    ids = [i for _ in procs for i in out.get(timeout=120)]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert len(ids) == PROCESSES * THREADS * SENDS
    assert len(set(ids)) == 1, f"{len(set(ids))} different task ids for one key"
    stats = client.broker.stats(["default"])[0]
    assert (stats.ready, stats.delayed, stats.inflight) == (1, 0, 0)

    workers.start("-c", "2")
    [owner] = set(ids)
    wait_for(lambda: settled(client.broker, ledger, [owner]), 30, "the one task to run")
    total = total_queue(client.broker, ledger, [owner])
    assert_nothing_lost(total)
    assert ledger.count("start") == {owner: 1}
    report(Figures("8 1,000 concurrent enqueues, one key", backend, len(ids), 0,
                   len(total.lost), len(total.duplicates), None,
                   f"{PROCESSES} procs x {THREADS} threads -> 1 message, ran once"))
