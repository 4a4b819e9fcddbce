"""Case 12: a half-open path to the broker (guarantees 1, 2 and 8 under a partition).

A worker (A) and a producer reach the broker's server through
:class:`~tests.faults.proxy.FaultProxy`; a second worker (B) and a second
producer reach it directly.  With work flowing, the proxy blackholes A's path
for three leases (bytes accepted, never answered, nothing closed: what a
NAT or firewall that dropped its state, or a partitioned host, looks like),
then heals; connections made before or during the blackhole stay dead.
Then:

* the proxied producer gets ``BrokerUnavailable`` naming the server (never
  the password) within its timeouts, instead of hanging;
* A starts no task once the lease of everything it fetched before the
  blackhole has run out (it cannot renew them, and B has them by then);
* B carries on meanwhile and takes over A's lapsed leases;
* A runs tasks again within a few seconds of the heal, though every pooled
  connection it had is dead;
* the ledger: lost = 0, and a task ran twice only if A started it before its
  lease could have lapsed (its ack could not be written, so the lease handed
  it out again).

The same cases run on Redis (a server of the test's own), PostgreSQL and
RabbitMQ (the shared test servers, a schema or vhost of the test's own; run
by ``make test-brokers``); :class:`Server` holds what differs: each one's
timeouts and the bounds they give.  Celery's Redis transport relies on
``socket_timeout`` and ``health_check_interval`` for the same fault
(``/work/ref/kombu/kombu/transport/redis.py``, ``Channel._connparams``).
The SQLite broker has no path to cut; its equivalent, a stalled filesystem,
is out of scope (docs/operations.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from conveyor import Conveyor
from conveyor._redis import CONNECTION_ERRORS, ClientHolder, call, parse_redis_url
from conveyor.exceptions import BrokerUnavailable

from ..conftest import OTHER_BROKERS, other_brokers
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
# libpq counts connect_timeout in whole seconds, and at least 2.
PG_CONNECT_TIMEOUT = 2
# RabbitMQ's heartbeat is whole seconds: 1 is the shortest a client may ask for.
HEARTBEAT = 1
AMQP_CONNECT_TIMEOUT = 1.0
BURST = 60
PLANTED = "s3cret-half-open"  # a password no error may show (PostgreSQL: trust ignores it)


@dataclass(frozen=True)
class Server:
    """A broker's server that the proxy fronts, and what the cases expect of it.

    ``query`` holds the proxied clients' timeouts; the bounds are the seconds
    a send (``send``), a monitor answer (``answer``) and a send on a reset
    path (``reset``) may take while the path is dead, and that A may take to
    run tasks again after the heal (``resume``), each what those timeouts
    give plus a margin for a loaded machine.
    """

    kind: str
    port: int
    url: str
    query: str
    results: str | None  # result_backend (None: beside the broker)
    refused: str  # what BrokerUnavailable says, with {port} for where it was sent
    secret: str | None  # what an error must not show
    send: float
    answer: float
    reset: float
    resume: float
    monitor: str = "/api/workers"  # an uncached monitor page that reads the server

    def through(self, proxy: FaultProxy) -> str:
        """This server's URL with the proxy's port and the timeouts in the query."""
        parts = urlsplit(self.url)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user + '@' if user else ''}127.0.0.1:{proxy.port}"
        query = "&".join(q for q in (parts.query, self.query) if q)
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    def says_where(self, proxy: FaultProxy) -> str:
        return self.refused.format(port=proxy.port)


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme, f"{user.split(':')[0]}:{password}@{host}", parts.path,
                       parts.query, ""))


@pytest.fixture(params=["redis", *OTHER_BROKERS])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "redis":
        require_redis_server()
        directory = tmp_path / "redis"
        directory.mkdir()
        redis_server = RedisServer(directory)
        redis_server.start()
        try:
            yield Server("redis", redis_server.port, redis_server.url, QUERY, None,
                         "Redis at 127.0.0.1:{port} is unavailable", None,
                         send=SOCKET_TIMEOUT + 1.0, answer=6 * SOCKET_TIMEOUT,
                         reset=SOCKET_TIMEOUT, resume=3 * SOCKET_TIMEOUT + 1)
        finally:
            redis_server.kill()
    elif request.param == "postgres":
        url = with_password(str(request.getfixturevalue("pg_url")), PLANTED)
        yield Server("postgres", urlsplit(url).port or 5432, url,
                     # No server setting: a transaction cut off mid-way is ended by
                     # the server after the limit the pool sets in its BEGIN.
                     f"socket_timeout={SOCKET_TIMEOUT}&connect_timeout={PG_CONNECT_TIMEOUT}",
                     None, "PostgreSQL at 127.0.0.1:{port}/", PLANTED,
                     # A read tries once more, on a new connection: a connect timeout.
                     send=SOCKET_TIMEOUT + 1.0, answer=SOCKET_TIMEOUT + PG_CONNECT_TIMEOUT + 1.5,
                     reset=SOCKET_TIMEOUT, resume=PG_CONNECT_TIMEOUT + 3 * SOCKET_TIMEOUT + 1)
    else:
        url = str(request.getfixturevalue("amqp_quorum_url"))
        yield Server("amqp", urlsplit(url).port or 5672, url,
                     f"heartbeat={HEARTBEAT}&connect_timeout={AMQP_CONNECT_TIMEOUT}",
                     f"sqlite:///{tmp_path / 'results.db'}",
                     "RabbitMQ at amqp://guest@127.0.0.1:{port}/", ":guest@",
                     send=HEARTBEAT + AMQP_CONNECT_TIMEOUT + 1.5,
                     answer=2 * (HEARTBEAT + AMQP_CONNECT_TIMEOUT) + 1.5,
                     reset=2.5, resume=HEARTBEAT + AMQP_CONNECT_TIMEOUT + 2,
                     monitor="/api/dead-letters?queue=default")


@pytest.fixture
def proxy(server: Server) -> Iterator[FaultProxy]:
    started = FaultProxy(server.port, lifetime=120)
    yield started
    started.close()


def refusal(server: Server, proxy: FaultProxy, error: BaseException) -> None:
    """``error`` names the server it could not reach, and no password."""
    text = str(error)
    assert server.says_where(proxy) in text, text
    assert server.secret is None or server.secret not in text, text


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
def test_blackholed_worker_and_producer(server: Server, proxy: FaultProxy,
                                        tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.txt")
    direct = Workers(server.url, ledger, tmp_path / "b", results=server.results)
    proxied = Workers(server.through(proxy), ledger, tmp_path / "a", results=server.results)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    client = Conveyor("producer", broker=server.url, backend=server.results,
                      set_as_current=False)
    cut_off = Conveyor("cut-off-producer", broker=server.through(proxy),
                       backend=server.results, set_as_current=False)
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
        # The fault itself.  A lease renewed just before it lapses a lease later, and
        # a renewal under way then takes up to a socket timeout to fail.
        time.sleep(max(0.0, began + LEASE + SOCKET_TIMEOUT + 0.5 - time.monotonic()))
        after_lease = len(ledger.events())
        time.sleep(max(0.0, began + BLACKHOLE_FOR - time.monotonic()))
        late_starts = starts_by(ledger, a_pids, after_lease)
        b_ran = starts_by(ledger, children_of(b.pid), at_fault)
        server_closed = [round(t - began, 1) for t in proxy.server_closed]
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

        assert send_took < server.send, f"the send hung for {send_took:.1f}s"
        refusal(server, proxy, refused.value)
        assert not late_starts, f"A started tasks after their leases lapsed: {late_starts}"
        assert b_ran, "B stopped while A's path was dead"
        assert recovery < server.resume, f"A took {recovery:.1f}s to resume"
        assert a.poll() is None and b.poll() is None, "a worker exited"
        closed = f", the server closed A's connections at {server_closed}s" \
            if server_closed else ""
        report(Figures("12 half-open path (blackhole 3 leases)", server.kind, len(ids), 1,
                       len(total.lost), len(total.duplicates), recovery,
                       f"send refused after {send_took:.1f}s, "
                       f"{len(in_lease)} started by A within the lease{closed}"))
    finally:
        producer.stop.set()
        proxied.stop_all()
        direct.stop_all()
        client.close()
        cut_off.close()


@pytest.mark.parametrize("server", ["redis"], indirect=True)
def test_dead_pooled_connections_are_dropped_not_reused(proxy: FaultProxy) -> None:
    """One command failing on a dead connection closes the pool's idle ones too.

    Three pooled connections die together (blackholed, then the path heals
    with their state gone).  The first command pays one ``socket_timeout``;
    after that, three callers at once (the supervisor's threads, say) each
    get a working connection instead of waiting on another dead socket.
    """
    holder = ClientHolder(parse_redis_url(proxy.url(query=QUERY)))  # Redis's own pool
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


def test_producer_through_delay_reset_and_heal(server: Server, proxy: FaultProxy) -> None:
    """The proxy's other modes, seen by ``.delay()``: a slow path only slows it, a reset
    one fails it at once with ``BrokerUnavailable``, and it works again after."""
    app = Conveyor("producer", broker=server.through(proxy), backend=server.results,
                   set_as_current=False)
    try:
        app.send_task(task("sleep"), [0.0])
        proxy.slow(0.2)
        began = time.monotonic()
        app.send_task(task("sleep"), [0.0])
        assert 0.35 <= time.monotonic() - began < SOCKET_TIMEOUT + 0.5  # 0.2 s each way
        proxy.reset()
        began = time.monotonic()
        with pytest.raises(BrokerUnavailable) as refused:
            app.send_task(task("sleep"), [0.0])
        assert time.monotonic() - began < server.reset
        refusal(server, proxy, refused.value)
        proxy.passthrough()
        assert app.send_task(task("sleep"), [0.0]).id
    finally:
        app.close()


def test_monitor_answers_during_and_after_a_blackhole(server: Server,
                                                      proxy: FaultProxy) -> None:
    """The monitor's pages read the broker's server through the same bounded clients:
    while the path is dead an API call answers (an error) within the timeouts instead
    of hanging, and after the heal it answers normally again."""
    import httpx

    from ..integration.test_monitor_api import Served

    app = Conveyor("mon", broker=server.through(proxy), backend=server.results,
                   set_as_current=False)
    try:
        with Served(app) as api:
            assert api.get(server.monitor).status_code == 200
            proxy.blackhole()
            began = time.monotonic()
            try:
                status = api.get(server.monitor, timeout=3 * server.answer).status_code
            except httpx.HTTPError as exc:  # pragma: no cover - the assertion explains
                raise AssertionError(f"the monitor did not answer: {exc!r}") from exc
            took = time.monotonic() - began
            assert status >= 500 and took < server.answer, (status, took)
            proxy.heal()
            began = time.monotonic()
            wait_for(lambda: api.get(server.monitor).status_code == 200, 10,
                     "the monitor to answer after the heal")
            report(Figures("12b monitor across a blackhole", server.kind, 0, 1, 0, 0,
                           time.monotonic() - began, f"answered {status} in {took:.1f}s"))
    finally:
        app.close()


@pytest.mark.parametrize("server", [pytest.param("postgres", marks=other_brokers)],
                         indirect=True)
def test_postgres_listening_connection_comes_back_after_a_blackhole(
        server: Server, proxy: FaultProxy) -> None:
    """The LISTEN connection waits for notifications with no end, so a dead path
    would leave waiters polling for good: after a silence it asks the server a
    question of its own, finds the path dead within the timeouts, and listens on a
    new connection after the heal, so a send wakes a waiting reserve at once again."""
    from conveyor.brokers import broker_from_url
    from conveyor.brokers.base import Envelope

    # A poll far longer than the test: only a notification can wake the reserve.
    slow_poll = {"poll_interval": 60}
    cut = broker_from_url(server.through(proxy), slow_poll)
    direct = broker_from_url(server.url)
    try:
        assert cut.reserve(["q"], 1, LEASE, 0.01) == []  # starts the listener
        listener = cut._listener  # type: ignore[attr-defined]
        wait_for(listener.listening, 5, "the listener to listen")
        proxy.blackhole()
        began = time.monotonic()
        wait_for(lambda: not listener.listening(), 5, "the listener to find the path dead")
        noticed = time.monotonic() - began
        assert noticed < 1.0 + SOCKET_TIMEOUT + 0.5, noticed  # a second of silence, a check
        proxy.heal()
        wait_for(listener.listening, PG_CONNECT_TIMEOUT + 5, "the listener to listen again")
        pool = cut._pool  # type: ignore[attr-defined]
        pool.close()  # its idle connections died with the path: start from none
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.extend(cut.reserve(["q"], 1, LEASE, 10)))
        waiter.start()
        # Its connection back in the pool: the reserve looked, found nothing, and waits.
        wait_for(lambda: pool._idle, 5, "the reserve to look once")
        sent = time.monotonic()
        direct.enqueue(Envelope("woken", "q", b"x"))
        waiter.join(10)
        assert got and time.monotonic() - sent < 2, "the reserve was not woken by NOTIFY"
    finally:
        cut.close()
        direct.close()


@pytest.mark.parametrize("server", [pytest.param("postgres", marks=other_brokers)],
                         indirect=True)
def test_postgres_dead_idle_connections_go_with_the_first_failure(
        server: Server, proxy: FaultProxy) -> None:
    """A worker's broker and result store keep pools of their own on one server.
    After a dead path heals, the first call that fails on one pool's dead idle
    connection (one socket_timeout) takes the other pools' idle connections with
    it, so the next write on another store (a result, before an ack) gets a working
    connection instead of failing and handing its task back to run again."""
    from conveyor._postgres import Pool, parse_postgres_url

    options = parse_postgres_url(server.through(proxy))
    broker, results = Pool(options), Pool(options)
    try:
        for pool in (broker, results):
            pool.run("ping", lambda c: c.execute("SELECT 1"))
        proxy.blackhole()
        proxy.heal()
        began = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer"):
            broker.run("write", lambda c: c.execute("SELECT 1"))  # a write: no retry
        assert time.monotonic() - began < SOCKET_TIMEOUT + 0.5
        began = time.monotonic()
        results.run("write", lambda c: c.execute("SELECT 1"))
        assert time.monotonic() - began < SOCKET_TIMEOUT / 2, "a dead connection was reused"
    finally:
        broker.close()
        results.close()
