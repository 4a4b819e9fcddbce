"""Case 12: a half-open path to Redis (guarantees 1, 2 and 8 under a partition).

A worker (A) and a producer reach a Redis of the test's own through
:class:`~tests.faults.proxy.FaultProxy`; a second worker (B) and a second
producer reach it directly.  With work flowing, the proxy blackholes A's path
for three leases (bytes accepted, never answered, nothing closed: what a
NAT or firewall that dropped its state, or a partitioned host, looks like),
then heals; connections made before or during the blackhole stay dead.
Then:

* the proxied producer gets ``BrokerUnavailable`` naming the server within
  ``socket_timeout`` (plus a little), instead of hanging;
* A starts no task once the lease of everything it fetched before the
  blackhole has run out (it cannot renew them, and B has them by then);
* B carries on meanwhile and takes over A's lapsed leases;
* A runs tasks again within a few seconds of the heal, though every pooled
  connection it had is dead;
* the ledger: lost = 0, and a task ran twice only if A started it before its
  lease could have lapsed (its ack could not be written, so the lease handed
  it out again).

Celery's Redis transport relies on ``socket_timeout`` and
``health_check_interval`` for the same fault
(``/work/ref/kombu/kombu/transport/redis.py``, ``Channel._connparams``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor._redis import CONNECTION_ERRORS, ClientHolder, call, parse_redis_url
from conveyor.exceptions import BrokerUnavailable

from ..integration.processes import Ledger, wait_for
from .conftest import require_redis_server
from .harness import (
    LEASE,
    Figures,
    RedisServer,
    Workers,
    assert_nothing_lost,
    report,
    settled,
    task,
    total_queue,
    wait_ready,
)
from .proxy import FaultProxy
from .test_redis_restart import Producer

BLACKHOLE_FOR = 3 * LEASE
# Below a third of the lease, as docs/operations.md asks: one call stalled on a
# dead connection must not outlast the leases its renewals keep alive.
SOCKET_TIMEOUT = 0.6
QUERY = f"socket_timeout={SOCKET_TIMEOUT}&socket_connect_timeout={SOCKET_TIMEOUT}"
BURST = 60


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis_server()
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    started = FaultProxy(redis_server.port, lifetime=120)
    yield started
    started.close()


def children_of(pid: int) -> set[int]:
    """Current child pids of a worker supervisor (Linux)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()


def starts_by(ledger: Ledger, pids: set[int], since: int, until: int | None = None) -> list[str]:
    """Ids started by ``pids`` in ledger lines ``since`` to ``until``."""
    lines = ledger.events()[since:until]
    return [i for kind, i, _, pid in lines if kind == "start" and pid in pids]


def in_flight(ledger: Ledger, at: int, settling: int = 8) -> set[str]:
    """Ids running at ledger line ``at``, or ended in the ``settling`` lines before it
    (their ack may not have been written yet)."""
    lines = ledger.events()[:at]
    started = {i for kind, i, _, _ in lines if kind == "start"}
    ended = {i for kind, i, _, _ in lines[:max(0, at - settling)] if kind == "end"}
    return started - ended


@pytest.mark.slow
def test_blackholed_worker_and_producer(redis_server: RedisServer, proxy: FaultProxy,
                                        tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.txt")
    direct = Workers(redis_server.url, ledger, tmp_path / "b")
    proxied = Workers(proxy.url(query=QUERY), ledger, tmp_path / "a")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    client = Conveyor("producer", broker=redis_server.url, set_as_current=False)
    cut_off = Conveyor("cut-off-producer", broker=proxy.url(query=QUERY), set_as_current=False)
    producer = Producer(client, interval=0.03)
    thread = threading.Thread(target=producer.run, daemon=True)
    try:
        a = proxied.start("-c", "2")
        b = direct.start("-c", "2")
        wait_ready(proxied, a)
        wait_ready(direct, b)
        wait_for(lambda: len(children_of(a.pid)) == 2, 10, "A's children")
        a_pids = children_of(a.pid)
        thread.start()
        wait_for(lambda: len(starts_by(ledger, a_pids, 0)) >= 10, 30, "A to run tasks")
        cut_off.send_task(task("sleep"), [0.0])  # its pool now holds a connection
        # A backlog, so A's children hold prefetched messages when the path dies.
        burst = [client.send_task(task("sleep"), [0.05]).id for _ in range(BURST)]
        wait_for(lambda: any(i in burst for i in starts_by(ledger, a_pids, 0)), 10,
                 "A to fetch from the burst")

        at_fault = len(ledger.events())
        began = time.monotonic()
        proxy.blackhole()
        with pytest.raises(BrokerUnavailable) as refused:
            cut_off.send_task(task("sleep"), [0.0])
        send_took = time.monotonic() - began
        time.sleep(LEASE + 0.5)  # the fault itself: the path stays dead this long
        after_lease = len(ledger.events())
        time.sleep(max(0.0, began + BLACKHOLE_FOR - time.monotonic()))
        late_starts = starts_by(ledger, a_pids, after_lease)
        b_ran = starts_by(ledger, children_of(b.pid), at_fault)
        proxy.heal()
        healed = time.monotonic()
        at_heal = len(ledger.events())
        wait_for(lambda: starts_by(ledger, children_of(a.pid), at_heal), 30,
                 "A to run tasks again after the heal")
        recovery = time.monotonic() - healed
        producer.stop.set()
        thread.join(10)

        ids = [*producer.accepted, *burst]
        wait_for(lambda: settled(client.broker, ledger, ids), 60, "every accepted task to run")
        total = total_queue(client.broker, ledger, ids)
        in_lease = set(starts_by(ledger, a_pids, at_fault, after_lease))
        may_repeat = in_flight(ledger, at_fault) | in_lease
        assert_nothing_lost(total, may_repeat=may_repeat)

        assert send_took < SOCKET_TIMEOUT + 1.0, f"the send hung for {send_took:.1f}s"
        assert f"Redis at 127.0.0.1:{proxy.port} is unavailable" in str(refused.value)
        assert not late_starts, f"A started tasks after their leases lapsed: {late_starts}"
        assert b_ran, "B stopped while A's path was dead"
        assert recovery < 3 * SOCKET_TIMEOUT + 1, f"A took {recovery:.1f}s to resume"
        assert a.poll() is None and b.poll() is None, "a worker exited"
        report(Figures("12 half-open path (blackhole 3 leases)", "redis", len(ids), 1,
                       len(total.lost), len(total.duplicates), recovery,
                       f"send refused after {send_took:.1f}s, "
                       f"{len(in_lease)} started by A within the lease"))
    finally:
        producer.stop.set()
        proxied.stop_all()
        direct.stop_all()
        client.close()
        cut_off.close()


def test_dead_pooled_connections_are_dropped_not_reused(proxy: FaultProxy) -> None:
    """One command failing on a dead connection closes the pool's idle ones too.

    Three pooled connections die together (blackholed, then the path heals
    with their state gone).  The first command pays one ``socket_timeout``;
    after that, three callers at once (the supervisor's threads, say) each
    get a working connection instead of waiting on another dead socket.
    """
    holder = ClientHolder(parse_redis_url(proxy.url(query=QUERY)))
    pool = holder.client.connection_pool
    idle = [pool.get_connection() for _ in range(3)]
    for conn in idle:
        pool.release(conn)
    proxy.blackhole()
    proxy.heal()
    try:
        began = time.monotonic()
        with pytest.raises(CONNECTION_ERRORS):
            call(holder.client, "PING")
        assert time.monotonic() - began < SOCKET_TIMEOUT + 0.5
        began = time.monotonic()
        busy = [pool.get_connection() for _ in range(3)]
        try:
            for conn in busy:
                conn.send_command("PING")
                assert conn.read_response() == b"PONG"
        finally:
            for conn in busy:
                pool.release(conn)
        assert time.monotonic() - began < SOCKET_TIMEOUT / 2, "a dead connection was reused"
    finally:
        holder.close()


def test_producer_through_delay_reset_and_heal(proxy: FaultProxy) -> None:
    """The proxy's other modes, seen by ``.delay()``: a slow path only slows it, a reset
    one fails it at once with ``BrokerUnavailable``, and it works again after."""
    app = Conveyor("producer", broker=proxy.url(query=QUERY), set_as_current=False)
    try:
        app.send_task(task("sleep"), [0.0])
        proxy.slow(0.2)
        began = time.monotonic()
        app.send_task(task("sleep"), [0.0])
        assert 0.35 <= time.monotonic() - began < SOCKET_TIMEOUT + 0.5  # 0.2 s each way
        proxy.reset()
        began = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="is unavailable"):
            app.send_task(task("sleep"), [0.0])
        assert time.monotonic() - began < SOCKET_TIMEOUT
        proxy.passthrough()
        assert app.send_task(task("sleep"), [0.0]).id
    finally:
        app.close()


def test_monitor_answers_during_and_after_a_blackhole(proxy: FaultProxy) -> None:
    """The monitor's pages read Redis through the same bounded clients: while the path
    is dead an API call answers (an error) within the timeouts instead of hanging, and
    after the heal it answers normally again."""
    import httpx

    from ..integration.test_monitor_api import Served

    app = Conveyor("mon", broker=proxy.url(query=QUERY), set_as_current=False)
    try:
        with Served(app) as api:
            assert api.get("/api/workers").status_code == 200
            proxy.blackhole()
            began = time.monotonic()
            try:
                status = api.get("/api/workers", timeout=8 * SOCKET_TIMEOUT).status_code
            except httpx.HTTPError as exc:  # pragma: no cover - the assertion explains
                raise AssertionError(f"the monitor did not answer: {exc!r}") from exc
            took = time.monotonic() - began
            assert status >= 500 and took < 6 * SOCKET_TIMEOUT, (status, took)
            proxy.heal()
            began = time.monotonic()
            wait_for(lambda: api.get("/api/workers").status_code == 200, 10,
                     "the monitor to answer after the heal")
            report(Figures("12b monitor across a blackhole", "redis", 0, 1, 0, 0,
                           time.monotonic() - began, f"answered {status} in {took:.1f}s"))
    finally:
        app.close()
