"""Celery settings that reach the clients and the worker: TLS, timeouts, result retries,
``db+`` result URLs, ``include``, ``task_store_errors_even_if_ignored``, ``current_app``."""

from __future__ import annotations

import logging
import ssl
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import Conveyor, current_app, states
from conveyor.exceptions import BrokerError, ConfigurationError, ResultError
from conveyor.resultstores import result_store_from_url
from conveyor.resultstores.memory import MemoryResultStore
from conveyor.resultstores.retrying import RetryingResultStore
from conveyor.testing import run_worker


def client_kwargs(holder_owner: Any) -> dict[str, Any]:
    """The keyword arguments the store's or broker's redis.Redis pool was built with."""
    client: redis.Redis = holder_owner._holder.client
    return dict(client.connection_pool.connection_kwargs)


def tls_url(redis_url: str) -> str:
    return redis_url.replace("redis://", "rediss://", 1) + f"?prefix=t-{uuid.uuid4().hex[:8]}"


# -- TLS ----------------------------------------------------------------------------

def test_broker_use_ssl_reaches_the_redis_client(redis_url: str) -> None:
    """Celery: broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": ...}
    configures the Redis transport's TLS.  The test server speaks plain Redis, so the
    TLS handshake fails: the options were used."""
    app = Conveyor("tls", broker=tls_url(redis_url), set_as_current=False,
                   broker_use_ssl={"ssl_cert_reqs": ssl.CERT_NONE, "ssl_certfile": None},
                   broker_transport_options={"socket_timeout": 0.3})  # the handshake waits
    kwargs = client_kwargs(app.broker)
    assert kwargs["ssl_cert_reqs"] == "none"
    assert app.broker._holder.client.connection_pool.connection_class is redis.SSLConnection
    with pytest.raises(BrokerError, match="unavailable"):
        app.broker.stats(["default"])


def test_redis_backend_use_ssl_reaches_the_result_store_client(redis_url: str) -> None:
    app = Conveyor("tls", broker="memory://tls", backend=tls_url(redis_url),
                   set_as_current=False,
                   redis_backend_use_ssl={"ssl_cert_reqs": "CERT_OPTIONAL"},
                   redis_socket_timeout=0.3)
    assert client_kwargs(app.backend)["ssl_cert_reqs"] == "optional"
    with pytest.raises(ResultError, match="unavailable"):
        app.backend.get("some-id")


def test_tls_settings_for_a_url_that_is_not_tls_are_refused(redis_url: str) -> None:
    secret_url = redis_url.replace("redis://", "redis://:s3cret@", 1)
    app = Conveyor("tls", broker=secret_url, set_as_current=False, broker_use_ssl=True)
    with pytest.raises(ConfigurationError, match=r"broker_use_ssl is set but .* redis://, not "
                                                 r"TLS: use a rediss://") as info:
        app.broker  # noqa: B018
    assert "s3cret" not in str(info.value)
    app = Conveyor("tls", broker="memory://x", backend=secret_url, set_as_current=False,
                   redis_backend_use_ssl={"ssl_cert_reqs": "required"})
    with pytest.raises(ConfigurationError, match="redis_backend_use_ssl is set but"):
        app.backend  # noqa: B018
    app = Conveyor("tls", broker=tls_url(redis_url), set_as_current=False,
                   broker_use_ssl={"cert_reqs": "required"})
    with pytest.raises(ConfigurationError, match=r"broker_use_ssl: unknown key.* cert_reqs"):
        app.broker  # noqa: B018


# -- timeouts and pool sizes --------------------------------------------------------------

def test_broker_connection_timeout_is_the_redis_connect_timeout(redis_url: str) -> None:
    """Celery: broker_connection_timeout, seconds to wait while connecting to the broker."""
    app = Conveyor("t", broker=redis_url, set_as_current=False, broker_connection_timeout=1.5)
    assert client_kwargs(app.broker)["socket_connect_timeout"] == 1.5
    app.conf.broker_transport_options = {"socket_connect_timeout": 2.5}  # the explicit one wins
    assert client_kwargs(app.broker)["socket_connect_timeout"] == 2.5


def test_redis_result_settings_reach_the_result_store_client(redis_url: str) -> None:
    """Celery: redis_socket_timeout, redis_socket_connect_timeout, redis_max_connections."""
    app = Conveyor("t", broker="memory://t", backend=redis_url, set_as_current=False,
                   redis_socket_timeout=7, redis_socket_connect_timeout=3,
                   redis_max_connections=5)
    kwargs = client_kwargs(app.backend)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (7.0, 3.0)
    assert app.backend._holder.client.connection_pool.max_connections == 5


def test_results_beside_a_tls_broker_use_the_brokers_tls_options(redis_url: str) -> None:
    app = Conveyor("t", broker=tls_url(redis_url), set_as_current=False,
                   broker_use_ssl={"ssl_cert_reqs": "none"})
    assert client_kwargs(app.backend)["ssl_cert_reqs"] == "none"


# -- result_backend_always_retry ----------------------------------------------------

class Flaky(MemoryResultStore):
    """A store whose first ``failures`` reads cannot connect."""

    def __init__(self, failures: int, cause: Exception) -> None:
        super().__init__(f"memory://{uuid.uuid4().hex}")
        self.failures, self.cause, self.calls = failures, cause, 0

    def get(self, task_id: str) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise ResultError("store unavailable") from self.cause
        return super().get(task_id)


def test_result_store_calls_that_cannot_connect_are_retried() -> None:
    """Celery: with result_backend_always_retry, a recoverable backend error is retried up
    to result_backend_max_retries times with exponential backoff."""
    flaky = Flaky(2, redis.ConnectionError("refused"))
    assert RetryingResultStore(flaky, 5, 0.001, 0.01).get("x") is None
    assert flaky.calls == 3
    flaky = Flaky(5, redis.ConnectionError("refused"))
    with pytest.raises(ResultError):
        RetryingResultStore(flaky, 2, 0.001, 0.01).get("x")
    assert flaky.calls == 3  # the first try and two retries
    flaky = Flaky(5, ValueError("not a connection problem"))
    with pytest.raises(ResultError):
        RetryingResultStore(flaky, 5, 0.001, 0.01).get("x")
    assert flaky.calls == 1


def test_an_unreachable_redis_result_store_is_retried_as_configured(
        caplog: pytest.LogCaptureFixture) -> None:
    app = Conveyor("t", broker="memory://t", backend="redis://127.0.0.1:1/0",
                   set_as_current=False, result_backend_always_retry=True,
                   result_backend_max_retries=3,
                   result_backend_base_sleep_between_retries_ms=1,
                   result_backend_max_sleep_between_retries_ms=5)
    with caplog.at_level(logging.WARNING, logger="conveyor.resultstores"), \
            pytest.raises(ResultError, match="unavailable"):
        app.backend.get("x")
    assert [r.getMessage().split(" in ")[0][-7:] for r in caplog.records] == [
        "retry 1", "retry 2", "retry 3"]
    off = Conveyor("t", broker="memory://t", backend="redis://127.0.0.1:1/0",
                   set_as_current=False)
    assert not isinstance(off.backend, RetryingResultStore)


# -- db+ result backends ------------------------------------------------------------

def test_db_sqlite_result_backend_is_the_sqlite_store(backend_url: str, tmp_path: Path) -> None:
    """Celery: result_backend = "db+sqlite:///results.sqlite" (SQLAlchemy backend)."""
    path = tmp_path / "results.sqlite"
    app = Conveyor("db", broker=backend_url, backend=f"db+sqlite:///{path}",
                   set_as_current=False)

    @app.task
    def double(x: int) -> int:
        return 2 * x

    with run_worker(app) as worker:
        result = double.delay(21)
        worker.join()
        assert result.get(timeout=10) == 42
    assert path.exists()
    again = result_store_from_url(f"db+sqlite:///{path}").get(result.id)
    assert again is not None and again.state == states.SUCCESS


def test_db_postgresql_result_backend_is_the_postgres_store(pg_url: str) -> None:
    """Celery's ``db+postgresql+psycopg2://`` URL: Conveyor's store, on psycopg 3."""
    from conveyor.resultstores.postgres import PostgresResultStore

    store = result_store_from_url("db+" + pg_url.replace("postgresql://", "postgresql+psycopg2://"))
    assert isinstance(store, PostgresResultStore)
    store.set("t", states.SUCCESS, b"{}", 60)
    assert store.get("t") == result_store_from_url(pg_url).get("t")
    store.close()


@pytest.mark.parametrize(("url", "expected"), [
    ("db+mysql://u:s3cret@db/results", "SQLAlchemy backend for mysql has no counterpart"),
    ("db+oracle://u:s3cret@db/results", "SQLAlchemy backend for oracle has no counterpart"),
])
def test_other_db_result_backends_are_refused_naming_the_alternative(
        url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as info:
        result_store_from_url(url)
    assert "s3cret" not in str(info.value) and "django-db" in str(info.value)


# -- include, task_store_errors_even_if_ignored ----------------------------------------

def test_celery_include_setting_imports_its_modules_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery: include, modules imported when the worker starts (after imports)."""
    module = f"included_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from conveyor import shared_task\n\n@shared_task(name='included.ping')\n"
        "def ping():\n    return 'pong'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Conveyor("inc", broker="memory://inc", set_as_current=False)
    app.config_from_object({"CELERY_INCLUDE": [module]}, namespace="CELERY")
    assert module not in sys.modules
    app.finalize()
    assert module in sys.modules and "included.ping" in app.tasks


@pytest.mark.parametrize("store_errors", [True, False])
def test_task_store_errors_even_if_ignored(backend_url: str, store_errors: bool) -> None:
    """Celery: task_store_errors_even_if_ignored stores failures of ignore_result tasks."""
    app = Conveyor("ign", broker=backend_url, set_as_current=False,
                   task_store_errors_even_if_ignored=store_errors)

    @app.task(ignore_result=True)
    def boom() -> None:
        raise ValueError("kaboom")

    with run_worker(app) as worker:
        result = boom.delay()
        worker.join()
    if store_errors:
        with pytest.raises(ValueError, match="kaboom"):
            result.get(timeout=10)
    else:
        assert result.state == states.PENDING


# -- current_app ----------------------------------------------------------------------

def test_current_app_follows_the_current_app() -> None:
    """Celery: celery.current_app, the app that is current (set_current) at each use."""
    first = Conveyor("first", broker="memory://first")
    assert current_app() is first and current_app.main == "first"
    assert current_app._get_current_object() is first
    second = Conveyor("second", broker="memory://second", set_as_current=False)
    second.set_current()
    assert current_app.conf is second.conf and current_app() is second


# -- broker connection retries at start ------------------------------------------------

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once


def start_worker(caplog: pytest.LogCaptureFixture, **settings: Any) -> Exception | None:
    from conveyor.worker.main import Worker

    app = Conveyor("retry", broker=UNREACHABLE, set_as_current=False, **settings)
    worker = Worker(app, concurrency=1, pool="threads")
    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        try:
            worker.run(install_signals=False)
        except BrokerError as exc:
            return exc
    return None


@pytest.mark.parametrize("settings", [
    {"broker_connection_retry_on_startup": False},
    {"broker_connection_retry": False},  # decides when ..._on_startup is None, as in Celery
])
def test_a_worker_that_may_not_retry_fails_at_start(
        caplog: pytest.LogCaptureFixture, settings: dict[str, bool]) -> None:
    """Celery: worker/consumer/consumer.py ensure_connected connects once when retrying at
    start is disabled, and the worker shuts down with an error."""
    error = start_worker(caplog, **settings)
    assert error is not None and f"{next(iter(settings))} is False: not retrying" in str(error)
    assert caplog.records == []  # no "trying again"


def test_a_worker_gives_up_after_broker_connection_max_retries(
        caplog: pytest.LogCaptureFixture) -> None:
    """Celery: broker_connection_max_retries bounds the retries before the worker gives up."""
    error = start_worker(caplog, broker_connection_max_retries=3)
    assert error is not None and "after 3 retries (broker_connection_max_retries)" in str(error)
    assert [r.getMessage().rsplit("(", 1)[1] for r in caplog.records] == ["1/3)", "2/3)", "3/3)"]
    on_startup_wins = start_worker(caplog, broker_connection_retry=False,
                                   broker_connection_retry_on_startup=True,
                                   broker_connection_max_retries=1)
    assert on_startup_wins is not None and "after 1 retries" in str(on_startup_wins)
