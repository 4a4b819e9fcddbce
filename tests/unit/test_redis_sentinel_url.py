"""Celery's ``sentinel://`` URL form and the ``wait_replicas`` option, as parsed.

Celery reads ``sentinel://[:password@]host:port[/db];sentinel://host2:port2``
with ``master_name`` in the transport options, taking the database and
password from the first address (``/work/ref/celery/celery/backends/redis.py``,
``SentinelBackend._params_from_url``).  The failover itself is fault case 13.
"""

from __future__ import annotations

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
