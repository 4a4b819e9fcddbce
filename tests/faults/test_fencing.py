"""Case 3: a worker paused past its lease (SIGSTOP, then SIGCONT) is fenced out.

Its task runs elsewhere meanwhile; when the paused worker wakes and finishes
the same task, its late result must not replace the newer attempt's, and its
late acknowledgement must be refused (guarantee 1, ADR 0001 and 0002).  What
it had prefetched and not started went elsewhere too, and is not started
again when it wakes.

On RabbitMQ the handover comes from the consuming connection's heartbeat
(half the lease: RabbitMQ closes the stopped worker's connection), and the
late ack is refused through the side store's running record (ADR 0034).
"""

from __future__ import annotations

import signal
import time

import pytest

from conveyor import Conveyor, states

from ..integration.processes import Ledger, children_of, wait_for
from .harness import (
    LEASE,
    Figures,
    Workers,
    assert_nothing_lost,
    kill_group,
    report,
    settled,
    task,
    total_queue,
    wait_ready,
)


@pytest.fixture
def results_url(request: pytest.FixtureRequest, url: str) -> str | None:
    """Results beside the broker; RabbitMQ's in Redis here, not SQLite: a worker
    stopped while it writes to a SQLite file (its first open, a batch of monitor
    events) holds the file's write lock while stopped, and the worker taking over
    could not record its result -- SQLite's own limit (docs/operations.md), not
    the fencing under test."""
    return str(request.getfixturevalue("fault_redis_url")) if url.startswith("amqp") else None


def test_a_worker_paused_past_its_lease_cannot_overwrite_the_newer_attempt(
        client: Conveyor, workers: Workers, ledger: Ledger, backend: str) -> None:
    result = client.send_task(task("sleep"), [1.0])
    prefetched = [client.send_task(task("sleep"), [0]).id for _ in range(2)]
    stale = workers.start("-c", "1", "--prefetch-multiplier", "3")
    wait_for(lambda: ledger.count("start")[result.id] == 1, 30, "the first attempt to start")
    [(_, _, _, stale_pid)] = ledger.events("start")
    kill_group(stale, signal.SIGSTOP)
    paused_at = time.monotonic()

    fresh = workers.start("-c", "1")
    wait_for(lambda: result.state == states.SUCCESS, LEASE + 30, "the second attempt to finish")
    taken_over = time.monotonic() - paused_at
    fresh_pid = result.get(timeout=5)
    assert fresh_pid != stale_pid
    assert fresh_pid in children_of(fresh.pid)

    kill_group(stale, signal.SIGCONT)
    wait_for(lambda: ledger.count("end")[result.id] == 2, 30, "the stale attempt to finish")
    wait_for(lambda: workers.logs().count("lapsed while it waited to start") == 2, 10,
             "the stale worker to drop what it had prefetched")
    # Its supervisor acknowledges a few milliseconds later: wait for the refusal.
    wait_for(lambda: "ack of" in workers.logs(), 10, "the stale worker's ack to be refused")
    assert "result refused, a later delivery of the message took over" in workers.logs()
    assert all(ledger.count("start")[i] == 1 for i in prefetched), "a prefetched task ran twice"
    after = client.send_task(task("sleep"), [0])
    wait_ready(workers, fresh)
    assert after.get(timeout=30) > 0

    assert client.AsyncResult(result.id).get(timeout=5) == fresh_pid, \
        "the stale worker's late result replaced the newer attempt's"
    ids = [result.id, *prefetched, after.id]
    wait_for(lambda: settled(client.broker, ledger, ids), 30, "nothing left in flight")
    total = total_queue(client.broker, ledger, ids)
    assert_nothing_lost(total, may_repeat={result.id})
    assert stale.poll() is None, "the resumed worker carries on"
    report(Figures("3 SIGSTOP past the lease, SIGCONT", backend, len(ids), 1, len(total.lost),
                   len(total.duplicates), taken_over,
                   "stale result+ack refused, 2 prefetched not rerun; 1 rerun (paused holder)"))
