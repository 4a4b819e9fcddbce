"""Fixtures for the fault-injection suite, the ``--soak`` option and the figures table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor

from ..conftest import OTHER_BROKERS, TOPOLOGIES, require_service, require_tool
from ..integration.processes import Ledger
from ..postgres_servers import PostgresServer, postgres_bin
from .harness import FIGURES, RedisServer, Workers


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the 10-minute soak test (tests/faults/test_soak.py)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: the long soak test; runs only with --soak")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak", default=False):
        return
    skip = pytest.mark.skip(reason="the soak runs only with --soak (make soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault-injection figures")
    for figures in FIGURES:
        terminalreporter.write_line(figures.line())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """``CONVEYOR_FAULT_FIGURES=path``: append this process's figures to ``path`` too.

    Under pytest-xdist each worker process collects its own figures and the
    terminal summary (in the controller) sees none, so a table of a parallel
    run is gathered through the file (``make fault-figures``)."""
    path = os.environ.get("CONVEYOR_FAULT_FIGURES")
    if path and FIGURES:
        with open(path, "a") as out:
            out.write("".join(figures.line() + "\n" for figures in FIGURES))


def require_redis_server() -> None:
    """The ``redis-server`` binary, for tests that start (and kill) their own Redis."""
    require_tool("redis-server", RedisServer.available())


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    """One Redis for the suite on a port of its own, so no other test run can flush it."""
    if not RedisServer.available():
        yield None
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the suite, ``initdb``'d once on a port of its own,
    which PostgreSQL fault tests may terminate, restart and kill.

    Needs PostgreSQL's server binaries: skipped without them, failed under CI."""
    require_tool("PostgreSQL's server (initdb, pg_ctl)", postgres_bin() is not None)
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def fault_redis_url(request: pytest.FixtureRequest,
                    private_redis: RedisServer | None) -> str:
    """A clean Redis database: the private server when there is one, else db 15."""
    if private_redis is None:
        return str(request.getfixturevalue("redis_url"))
    require_service("Redis", "127.0.0.1", private_redis.port)
    private_redis.flush()
    return private_redis.url


@pytest.fixture(params=["sqlite", "redis", *TOPOLOGIES, *OTHER_BROKERS])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The broker URL: SQLite, Redis, Redis behind Sentinel and in a Cluster, Valkey
    (marked ``topology``), PostgreSQL and RabbitMQ (its side store in this test's
    directory; marked ``other_brokers``).  A test that needs
    another set names it with ``@pytest.mark.parametrize("url", [...], indirect=True)``."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    if request.param in ("postgres", "amqp", "sentinel", "cluster", "valkey"):
        # RabbitMQ with its default queue type, quorum: it counts redeliveries exactly
        # (classic queues only flag them), which the max_deliveries cases rely on.
        fixture = {"postgres": "pg_url", "amqp": "amqp_quorum_url"}.get(
            request.param, f"{request.param}_url")
        return str(request.getfixturevalue(fixture))
    return str(request.getfixturevalue("fault_redis_url"))


@pytest.fixture
def results_url(url: str, tmp_path: Path) -> str | None:
    """Where results go: beside the broker, except for RabbitMQ (it keeps no records)."""
    return f"sqlite:///{tmp_path / 'results.db'}" if url.startswith("amqp") else None


@pytest.fixture
def backend(request: pytest.FixtureRequest, url: str) -> str:
    """The broker's kind, for the figures: sqlite, redis, sentinel, redis+cluster …,
    and valkey (its URL says ``redis://``: the parameter tells it apart)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("url") == "valkey":
        return "valkey"
    return url.split(":", 1)[0]


@pytest.fixture
def client(url: str, results_url: str | None) -> Iterator[Conveyor]:
    app = Conveyor("fault-client", broker=url, backend=results_url, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def workers(url: str, results_url: str | None, ledger: Ledger,
            tmp_path: Path) -> Iterator[Workers]:
    started = Workers(url, ledger, tmp_path, results=results_url)
    yield started
    started.stop_all()


def known_gap(request: pytest.FixtureRequest, url: str, reason: str,
              strict: bool = True) -> None:
    """Mark this case an expected failure on RabbitMQ, with the gap it shows.

    Each use is listed as still open in issue 20's notes and in
    docs/operations.md (RabbitMQ); a strict one fails the run once it passes.
    """
    if url.startswith("amqp"):
        request.applymarker(pytest.mark.xfail(reason=f"RabbitMQ: {reason}", strict=strict))
