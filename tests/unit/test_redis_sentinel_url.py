"""Celery's ``sentinel://`` URL form and the ``wait_replicas`` option, as parsed.

Celery reads ``sentinel://[:password@]host:port[/db];sentinel://host2:port2``
with ``master_name`` in the transport options, taking the database and
password from the first address (``/work/ref/celery/celery/backends/redis.py``,
``SentinelBackend._params_from_url``).  The failover itself is fault case 13.
"""

from __future__ import annotations

import ssl

import pytest

from conveyor._config import Settings, values_from_env
from conveyor._redis import parse_redis_url
from conveyor.exceptions import ConfigurationError

URL = "sentinel://:s3cret@10.0.0.1:26380/2;sentinel://10.0.0.2"


def test_sentinel_url_names_every_sentinel_and_the_master() -> None:
    options = parse_redis_url(URL, {"master_name": "main", "sentinel_kwargs": {"password": "x"}})
    assert options.sentinel is not None
    assert options.sentinel.hosts == (("10.0.0.1", 26380), ("10.0.0.2", 26379))
    assert options.sentinel.master_name == "main"
    assert options.sentinel.sentinel_kwargs["password"] == "x"
    assert options.client_kwargs["db"] == 2
    assert options.client_kwargs["password"] == "s3cret"
    assert "host" not in options.client_kwargs
    assert "s3cret" not in options.address


@pytest.mark.parametrize(("url", "extra", "says"), [
    ("sentinel://h:1", {}, "needs the master_name option"),
    ("sentinel://h:1;redis://h2", {"master_name": "m"}, "every address must be sentinel://"),
    ("redis://h", {"master_name": "m"}, "only apply to sentinel:// URLs"),
    ("redis://h", {"wait_replicas": -1}, "wait_replicas must be >= 0"),
])
def test_bad_sentinel_settings_are_refused_by_name(url: str, extra: dict[str, object],
                                                   says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        parse_redis_url(url, extra)


def test_wait_replicas_is_read() -> None:
    options = parse_redis_url("redis://h/0?wait_replicas=1&wait_timeout=0.5")
    assert (options.wait_replicas, options.wait_timeout) == (1, 0.5)
    assert parse_redis_url("redis://h/0").wait_replicas == 0


def test_results_beside_a_sentinel_broker_ask_the_same_master() -> None:
    settings = Settings(broker_url="sentinel://h:26379/0",
                        broker_transport_options={"master_name": "main", "prefix": "p"})
    options = settings.result_options()
    assert options["master_name"] == "main"
    # One prefix for the app's keys (issue 17; this asserted the old split before).
    assert options["prefix"] == "p"


def test_transport_options_from_the_environment_are_json() -> None:
    """How a worker started by a process manager gets ``master_name``."""
    values = values_from_env({"CONVEYOR_BROKER_TRANSPORT_OPTIONS": '{"master_name": "main"}'})
    assert values["broker_transport_options"] == {"master_name": "main"}


def test_wait_replicas_for_the_result_store_is_refused() -> None:
    from conveyor.resultstores.redis import RedisResultStore

    with pytest.raises(ConfigurationError, match="wait_replicas applies to the broker"):
        RedisResultStore("redis://127.0.0.1:1/0", wait_replicas=1)


def test_a_socket_timeout_that_outlasts_a_third_of_the_lease_is_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    from conveyor import Conveyor
    from conveyor.worker.startup import warn_if_calls_outlast_leases

    app = Conveyor("t", broker="redis://127.0.0.1:1/0?socket_timeout=5", set_as_current=False)
    try:
        assert warn_if_calls_outlast_leases(app, 30.0) is False
        with caplog.at_level("WARNING", logger="conveyor.worker"):
            assert warn_if_calls_outlast_leases(app, 6.0) is True
        assert "socket_timeout (5s) is above a third of broker_lease_timeout" in caplog.text
    finally:
        app.close()


@pytest.mark.parametrize("later", [
    "sentinel://10.0.0.2:26379/3",  # another database
    "sentinel://:0th3rpw@10.0.0.2:26379",  # another password
    "sentinel://10.0.0.2:26379/0?prefix=p",  # options Celery would not read there
])
def test_a_later_sentinel_address_with_a_database_or_options_of_its_own_is_refused(
        later: str) -> None:
    """Celery reads them from the first address only: elsewhere they would be ignored."""
    with pytest.raises(ConfigurationError, match="go on its first address") as info:
        parse_redis_url(f"sentinel://:s3cret@10.0.0.1:26379/0;{later}", {"master_name": "m"})
    assert "s3cret" not in str(info.value) and "0th3rpw" not in str(info.value)


def test_a_later_sentinel_address_may_repeat_the_first_ones_database_and_password() -> None:
    url = "sentinel://:pw@a:1/2?master_name=m;sentinel://:pw@b:2/2;sentinel://c:3"
    options = parse_redis_url(url)
    assert options.client_kwargs["db"] == 2
    assert options.sentinel is not None and len(options.sentinel.hosts) == 3


def test_tls_to_the_master_and_to_the_sentinels_are_set_apart() -> None:
    """``ssl`` (Celery: broker_use_ssl) is for the master's connections;
    ``sentinel_kwargs`` says how to reach the sentinels, as in Celery."""
    options = parse_redis_url(URL, {
        "master_name": "main", "ssl": True, "ssl_ca_certs": "/ca.pem",
        "sentinel_kwargs": {"ssl": True, "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                            "ssl_ca_certs": "/sentinel-ca.pem", "socket_timeout": "2"}})
    assert options.client_kwargs["ssl"] is True
    assert options.client_kwargs["ssl_cert_reqs"] == "required"
    assert options.client_kwargs["ssl_ca_certs"] == "/ca.pem"
    assert options.sentinel is not None
    assert options.sentinel.sentinel_kwargs == {
        "socket_timeout": 2.0, "socket_connect_timeout": 1.0, "ssl": True,
        "ssl_cert_reqs": "optional", "ssl_ca_certs": "/sentinel-ca.pem"}
    plain = parse_redis_url(URL, {"master_name": "main"})
    assert "ssl" not in plain.client_kwargs
    assert plain.sentinel is not None and "ssl" not in plain.sentinel.sentinel_kwargs


@pytest.mark.parametrize(("extra", "says"), [
    ({"sentinel_kwargs": {"ssl_ca_certs": "/ca.pem"}}, "need ssl=True there too"),
    ({"sentinel_kwargs": {"db": 1}}, "unknown sentinel_kwargs key.* db"),
    ({"sentinel_kwargs": {"socket_timeout": "soon"}}, r"sentinel_kwargs\['socket_timeout'\]"),
    ({"ssl_ca_certs": "/ca.pem"}, "only apply with TLS"),
    ({"ssl": "maybe"}, "option ssl='maybe'"),
])
def test_tls_options_that_would_be_ignored_are_refused(extra: dict[str, object],
                                                       says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        parse_redis_url(URL, {"master_name": "main", **extra})


def test_sentinels_are_asked_once_each_with_a_message_naming_each() -> None:
    """No sentinel reachable: one attempt per sentinel (redis-py would retry each three
    times, backing off from 1 s), and the error says what each one answered."""
    import time

    import redis

    from conveyor._redis import new_client

    options = parse_redis_url("sentinel://127.0.0.1:1;sentinel://127.0.0.1:2",
                              {"master_name": "main"})
    client = new_client(options.client_kwargs, options.sentinel)
    began = time.monotonic()
    with pytest.raises(redis.ConnectionError) as info:
        client.ping()
    assert time.monotonic() - began < 1.0
    assert "no sentinel named a master for 'main'" in str(info.value)
    assert "127.0.0.1:1: Error 111 connecting" in str(info.value)
    assert len(str(info.value)) < 400, str(info.value)
    client.close()


@pytest.mark.parametrize(("url", "says"), [
    ("redis://h/0?ssl=true", "for one server use a rediss:// URL"),
    ("unix:///tmp/r.sock?ssl=true", "for one server use a rediss:// URL"),
    ("rediss://h/0?ssl=false", "contradicts rediss://"),
    ("redis+cluster://h:1?ssl_certfile=/c.pem", "only apply with TLS"),
])
def test_the_ssl_option_applies_to_sentinel_and_cluster_only(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        parse_redis_url(url)


def test_broker_use_ssl_turns_tls_on_for_sentinel_and_cluster_as_in_celery() -> None:
    """Celery's Sentinel transport uses TLS to the master when broker_use_ssl is set;
    a cluster (Conveyor's) likewise; the result store beside the broker shares it."""
    for url in ("sentinel://h:26379/0", "redis+cluster://h:7000"):
        settings = Settings(broker_url=url, broker_transport_options={"master_name": "m"},
                            broker_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                            "ssl_ca_certs": "/ca.pem"})
        assert settings.broker_options()["ssl"] is True
        assert settings.broker_options()["ssl_ca_certs"] == "/ca.pem"
        assert settings.result_options()["ssl"] is True
    settings = Settings(broker_url="redis+cluster://h:7000", broker_use_ssl=True)
    assert parse_redis_url(settings.broker_url,
                           settings.broker_options()).client_kwargs["ssl_cert_reqs"] == "required"
