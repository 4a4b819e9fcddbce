"""Redis over TLS behind Sentinel and in a Cluster, against real TLS-only servers (issue 21).

Every server, sentinel and cluster bus here listens for TLS only
(``--port 0 --tls-port N``) with a certificate made by ``openssl`` for this
module (:mod:`tests.tls`).  Celery's settings carry the options:

* Sentinel: ``broker_use_ssl`` for the master's connections, and
  ``sentinel_kwargs`` (``ssl``, ``ssl_ca_certs``) for the sentinels' own;
* Cluster: ``broker_use_ssl`` (or ``ssl=true`` in the URL's query) for the
  question "who owns the slot" and the pinned connection alike.

A worker runs a task, a chord, stores its heartbeat and answers remote
control, so the broker, the result store, the event store and the control
channel each made their own TLS connections.  Leaving out one side's TLS
option, or trusting another certificate, fails with ``BrokerUnavailable``:
the options are used, not just accepted.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.exceptions import BrokerUnavailable
from conveyor.testing import run_worker

from ..conftest import require_redis_binaries, running
from ..redis_cluster import RedisCluster
from ..redis_sentinel import MASTER_NAME, SentinelSet
from ..tls import RedisTls, self_signed
from .test_redis_cluster import app_with_tasks, runs_everything

pytestmark = [pytest.mark.redis, pytest.mark.topology]

T = 20.0


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> RedisTls:
    return RedisTls.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_sentinels(tls: RedisTls, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[SentinelSet]:
    require_redis_binaries("Redis Sentinel")
    yield from running(SentinelSet(tmp_path_factory.mktemp("tls-sentinel"), replicas=1, tls=tls))


@pytest.fixture(scope="module")
def tls_cluster(tls: RedisTls, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RedisCluster]:
    require_redis_binaries("a Redis Cluster")
    yield from running(RedisCluster(tmp_path_factory.mktemp("tls-cluster"), replicas=0, tls=tls))


def _refused(app: Conveyor) -> str:
    """The error an enqueue raises; the app is closed."""
    try:
        with pytest.raises(BrokerUnavailable) as info:
            app.tasks["op.add"].delay(1, 2)
        return str(info.value)
    finally:
        app.close()


def _sentinel_settings(tls: RedisTls, prefix: str, master: bool = True,
                       sentinels: bool = True, ca: Path | None = None) -> dict[str, Any]:
    """Celery's settings for a TLS Sentinel set; each side's TLS can be left out."""
    trust = str(ca or tls.cert)
    options: dict[str, Any] = {"master_name": MASTER_NAME, "prefix": prefix,
                               "socket_timeout": 2, "socket_connect_timeout": 2}
    if sentinels:
        options["sentinel_kwargs"] = {"ssl": True, "ssl_ca_certs": trust,
                                      "ssl_cert_reqs": ssl.CERT_REQUIRED}
    settings: dict[str, Any] = {"broker_transport_options": options}
    if master:
        settings["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": trust}
    return settings


def test_sentinel_over_tls(tls: RedisTls, tls_sentinels: SentinelSet, redis_prefix: str) -> None:
    runs_everything(app_with_tasks(tls_sentinels.url, redis_prefix,
                                   **_sentinel_settings(tls, redis_prefix)))
    master = tls_sentinels.master_port()
    client = tls_sentinels._server(master).client()
    try:
        assert client.keys(f"{redis_prefix}:result:*"), "results were stored on the master"
    finally:
        client.close()


@pytest.mark.parametrize("side", ["master", "sentinels"])
def test_sentinel_without_tls_on_one_side_cannot_connect(
        tls: RedisTls, tls_sentinels: SentinelSet, redis_prefix: str, side: str) -> None:
    settings = _sentinel_settings(tls, redis_prefix, master=side != "master",
                                  sentinels=side != "sentinels")
    message = _refused(app_with_tasks(tls_sentinels.url, redis_prefix, **settings))
    assert f"master {MASTER_NAME!r} of sentinels" in message
    if side == "sentinels":
        assert "no sentinel named a master" in message


def test_sentinel_certificates_are_checked(tls: RedisTls, tls_sentinels: SentinelSet,
                                           redis_prefix: str, tmp_path: Path) -> None:
    """Trusting another certificate fails, on the sentinels' side as on the master's."""
    other, _ = self_signed(tmp_path)
    message = _refused(app_with_tasks(tls_sentinels.url, redis_prefix,
                                      **_sentinel_settings(tls, redis_prefix, ca=other)))
    assert "no sentinel named a master" in message
    assert "certificate verify failed" in message
    settings = _sentinel_settings(tls, redis_prefix)
    settings["broker_use_ssl"]["ssl_ca_certs"] = str(other)  # the master's side only
    message = _refused(app_with_tasks(tls_sentinels.url, redis_prefix, **settings))
    assert "certificate verify failed" in message


def test_cluster_over_tls(tls: RedisTls, tls_cluster: RedisCluster, redis_prefix: str) -> None:
    runs_everything(app_with_tasks(tls_cluster.url, redis_prefix,
                                   broker_use_ssl={"ssl_cert_reqs": "required",
                                                   "ssl_ca_certs": str(tls.cert)}))


def test_cluster_tls_options_in_the_url(tls: RedisTls, tls_cluster: RedisCluster,
                                        redis_prefix: str) -> None:
    url = f"{tls_cluster.url}?prefix={redis_prefix}&ssl=true&ssl_ca_certs={tls.cert}"
    app = app_with_tasks(url, redis_prefix)
    try:
        with run_worker(app):
            assert app.tasks["op.add"].delay(2, 3).get(timeout=T) == 5
    finally:
        app.close()


def test_cluster_without_tls_or_with_another_certificate_cannot_connect(
        tls: RedisTls, tls_cluster: RedisCluster, redis_prefix: str, tmp_path: Path) -> None:
    options = {"prefix": redis_prefix, "socket_timeout": 2, "socket_connect_timeout": 2}
    message = _refused(app_with_tasks(tls_cluster.url, redis_prefix,
                                      broker_transport_options=options))
    assert "Redis Cluster" in message
    other, _ = self_signed(tmp_path)
    message = _refused(app_with_tasks(tls_cluster.url, redis_prefix,
                                      broker_transport_options=options,
                                      broker_use_ssl={"ssl_ca_certs": str(other)}))
    assert "certificate verify failed" in message


def test_one_tls_server_reads_and_writes_through_the_direct_exchange(
        tls: RedisTls, tmp_path: Path, redis_prefix: str) -> None:
    """``_redis.exchange`` does the socket work itself for redis-py's own TLS connection
    too (an ``SSLSocket``: ``sendall`` and ``recv_into``, never the descriptor), and
    replies longer than one TLS record arrive whole."""
    import subprocess

    from conveyor._redis import _direct_parser, call

    from .test_redis_specific import free_port, wait_until

    require_redis_binaries("a TLS Redis server")
    port = free_port()
    server = subprocess.Popen(["redis-server", *tls.server_args(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none&prefix={redis_prefix}"
        app = Conveyor("tls-direct", broker=url, set_as_current=False)

        @app.task(name="t.echo")
        def echo(text: str) -> str:
            return text

        client = app.broker._holder.client  # type: ignore[attr-defined]

        def answers() -> bool:
            try:
                return call(client, "PING") in (b"PONG", True)
            except Exception:
                return False

        wait_until(answers, 10, "the TLS redis-server to start")
        ids = [echo.delay("x" * n).id for n in (1, 20_000, 100_000, 3)]
        conn = client.connection_pool._available_connections[0]
        assert type(conn._sock).__name__ == "SSLSocket" and _direct_parser(conn) is not None
        got = app.broker.reserve(["default"], 10, lease=30, timeout=0)
        assert [d.id for d in got] == ids
        assert call(client, "ECHO", b"y" * 300_000) == b"y" * 300_000
        app.close()
    finally:
        server.terminate()
        server.wait(10)
