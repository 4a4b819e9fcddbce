"""Shared fixtures: real services when present; under CI=true their absence fails."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
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


@pytest.fixture
def pg_dsn() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return PG_DSN


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


@pytest.fixture
def make_url(backend_url: str) -> Callable[[], str]:
    return lambda: backend_url
