"""Rate limits in real worker processes, on SQLite and Redis.

* ``rate_limit`` (Celery's, per worker): the starts of one task type are
  spaced by the limit across all the children of a worker, and held
  messages are neither refused nor handed out again.
* ``global_rate_limit`` (Conveyor's addition): two workers share one limit
  through the broker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import Conveyor

from ..integration.processes import Ledger, children_of, wait_for
from .harness import Workers, assert_nothing_lost, settled, total_queue, wait_ready

APP = "tests.faults.options_app"
INTERVAL = 0.5  # both test tasks allow two starts a second


def starts(ledger: Ledger) -> list[tuple[float, int]]:
    """(Unix time, pid) of each rate-limited start, in time order."""
    path = Path(str(ledger.path) + ".starts")
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return sorted((float(t), int(pid)) for t, pid, _ in rows)


def assert_spaced(times: list[float], interval: float) -> None:
    """Never early (the k-th start at least k intervals after the first), and not idle."""
    first = times[0]
    for k, t in enumerate(times):
        assert t - first >= k * interval - 0.15, f"start {k} came early: {times}"
    assert times[-1] - first <= (len(times) - 1) * interval + 2.0, f"too slow: {times}"


def test_per_worker_rate_limit_spaces_starts_across_children(
        client: Conveyor, tmp_path: Path, ledger: Ledger, url: str) -> None:
    """Celery: worker/consumer/consumer.py keeps a token bucket per task type per
    worker (capacity one) and holds a message until its token is free; six tasks
    at "2/s" start half a second apart, here across three prefork children."""
    workers = Workers(url, ledger, tmp_path, app=APP)
    try:
        # Prefetch 1: each child holds at most one message, so the six are
        # spread over the three children, which must share the limit.
        proc = workers.start("-c", "3", "--prefetch-multiplier", "1")
        wait_ready(workers, proc)
        ids = [client.send_task(f"{APP}.per_worker").id for _ in range(6)]
        ids += [client.send_task(f"{APP}.unlimited").id for _ in range(3)]
        wait_for(lambda: settled(client.broker, ledger, ids), 30, "every task to run")
        assert_nothing_lost(total_queue(client.broker, ledger, ids))
        got = starts(ledger)
        assert len(got) == 6
        assert_spaced([t for t, _ in got], INTERVAL)
        assert len({pid for _, pid in got}) >= 2, "the limit was not shared by children"
    finally:
        workers.stop_all()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_remote_rate_limit_changes_a_running_worker(
        client: Conveyor, tmp_path: Path, ledger: Ledger, url: str, pool: str) -> None:
    """Celery: worker/control.py ``rate_limit`` sets the task's limit on running
    workers and replies "new rate limit set successfully"; a falsy limit replies
    "rate limit disabled successfully" and lifts it.  Proven by the starts: six
    tasks with no limit of their own are spaced half a second apart once the
    command is answered, and bunch together again once it is lifted."""
    name = f"{APP}.adjustable"
    workers = Workers(url, ledger, tmp_path, app=APP)
    try:
        proc = workers.start("-c", "3", "-P", pool, "--prefetch-multiplier", "1")
        wait_ready(workers, proc)
        [reply] = client.control.rate_limit(name, "2/s", reply=True, timeout=5, limit=1)
        assert list(reply.values()) == [{"ok": "new rate limit set successfully"}]
        ids = [client.send_task(name).id for _ in range(6)]
        wait_for(lambda: settled(client.broker, ledger, ids), 30, "the limited tasks to run")
        limited = [t for t, _ in starts(ledger)]
        assert len(limited) == 6
        assert_spaced(limited, INTERVAL)
        [reply] = client.control.rate_limit(name, None, reply=True, timeout=5, limit=1)
        assert list(reply.values()) == [{"ok": "rate limit disabled successfully"}]
        more = [client.send_task(name).id for _ in range(6)]
        wait_for(lambda: settled(client.broker, ledger, ids + more), 30, "the rest to run")
        lifted = [t for t, _ in starts(ledger)][6:]
        assert len(lifted) == 6
        assert lifted[-1] - lifted[0] < 5 * INTERVAL - 0.5, f"still limited: {lifted}"
        assert_nothing_lost(total_queue(client.broker, ledger, ids + more))
    finally:
        workers.stop_all()


def test_held_messages_keep_their_leases(client: Conveyor, tmp_path: Path, ledger: Ledger,
                                         url: str) -> None:
    """A backlog held for its slots far longer than the lease (2 s here) is not
    handed out again: every task starts exactly once."""
    workers = Workers(url, ledger, tmp_path, app=APP)
    try:
        proc = workers.start("-c", "1", "--prefetch-multiplier", "8")
        wait_ready(workers, proc)
        ids = [client.send_task(f"{APP}.per_worker").id for _ in range(8)]  # 3.5 s of slots
        wait_for(lambda: settled(client.broker, ledger, ids), 30, "every task to run")
        total = total_queue(client.broker, ledger, ids)
        assert_nothing_lost(total)
        assert max(ledger.count("start").values()) == 1
        assert_spaced([t for t, _ in starts(ledger)], INTERVAL)
    finally:
        workers.stop_all()


def test_worker_disable_rate_limits(client: Conveyor, tmp_path: Path, ledger: Ledger,
                                    url: str) -> None:
    """Celery: worker_disable_rate_limits turns per-worker limits off."""
    workers = Workers(url, ledger, tmp_path, app=APP)
    try:
        proc = workers.start("-c", "1", "--prefetch-multiplier", "6",
                             worker_disable_rate_limits=True)
        wait_ready(workers, proc)
        ids = [client.send_task(f"{APP}.per_worker").id for _ in range(6)]
        wait_for(lambda: settled(client.broker, ledger, ids), 30, "every task to run")
        times = [t for t, _ in starts(ledger)]
        assert times[-1] - times[0] < 5 * INTERVAL / 2
    finally:
        workers.stop_all()


@pytest.mark.parametrize(("task", "queue"), [("shared", "default"), ("mail", "emails")])
def test_global_rate_limit_is_shared_by_two_workers(
        client: Conveyor, tmp_path: Path, ledger: Ledger, url: str, task: str,
        queue: str) -> None:
    """Conveyor's addition (Celery has none): the slots live in the broker, so
    two workers together start six "2/s" tasks half a second apart, under a
    task's global_rate_limit or its queue's (queue_global_rate_limits)."""
    workers = Workers(url, ledger, tmp_path, app=APP)
    try:
        procs = [workers.start("-c", "2", "--prefetch-multiplier", "1", "-Q", queue)
                 for _ in range(2)]
        for proc in procs:
            wait_ready(workers, proc)
        wait_for(lambda: all(len(children_of(p.pid)) == 2 for p in procs), 30, "children")
        ids = [client.send_task(f"{APP}.{task}", queue=queue).id for _ in range(6)]
        wait_for(lambda: settled(client.broker, ledger, ids, [queue]), 30, "every task to run")
        assert_nothing_lost(total_queue(client.broker, ledger, ids, [queue]))
        got = starts(ledger)
        assert len(got) == 6
        assert_spaced([t for t, _ in got], INTERVAL)
        by_worker = [set(children_of(p.pid)) for p in procs]
        ran_in = {i for _, pid in got for i, kids in enumerate(by_worker) if pid in kids}
        assert ran_in == {0, 1}, "both workers should have run some"
    finally:
        workers.stop_all()
