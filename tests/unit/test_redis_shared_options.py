"""Which broker options a Redis result store and event store share (issue 17).

Every Redis store of one app reads the same connection options: results
kept beside the broker (no ``result_backend``) use the broker's connection
(its TLS, timeouts, Sentinel options and prefix), a result store of its own
keeps the app's key prefix, and the result settings win where both are set.
The event store at the result URL is built with the result store's options.
"""

from __future__ import annotations

from typing import Any

from conveyor import Conveyor
from conveyor._events import _options_for


def _app(**conf: Any) -> Conveyor:
    app = Conveyor("shared", broker=conf.pop("broker", "redis://h:6379/0"),
                   set_as_current=False)
    for key, value in conf.items():
        setattr(app.conf, key, value)
    return app


def test_results_beside_the_broker_share_its_connection_and_prefix() -> None:
    app = _app(broker_transport_options={
        "prefix": "shop", "socket_timeout": 2.0, "max_connections": 7,
        "wait_replicas": 1, "priority_steps": [0, 5], "visibility_timeout": 60})
    opts = app.conf.result_options()
    assert opts["prefix"] == "shop" and opts["socket_timeout"] == 2.0
    assert opts["max_connections"] == 7
    # The broker's own options and Celery's ignored ones stay with the broker.
    assert not {"wait_replicas", "priority_steps", "visibility_timeout"} & set(opts)
    assert _options_for(app, app.conf.result_url) == opts


def test_result_settings_win_over_the_brokers() -> None:
    app = _app(broker_transport_options={"prefix": "shop", "socket_timeout": 2.0},
               redis_socket_timeout=9.0,
               result_backend_transport_options={"prefix": "results"})
    opts = app.conf.result_options()
    assert (opts["prefix"], opts["socket_timeout"]) == ("results", 9.0)


def test_a_result_url_of_its_own_keeps_only_the_app_prefix() -> None:
    app = _app(broker="redis://h:6379/0?prefix=shop",
               broker_transport_options={"socket_timeout": 2.0},
               result_backend="redis://other:6379/1")
    assert app.conf.result_options() == {"prefix": "shop"}
    app.conf.result_backend = "redis://other:6379/1?prefix=mine"
    assert "prefix" not in app.conf.result_options()  # the URL's own applies


def test_no_prefix_is_invented() -> None:
    assert "prefix" not in _app().conf.result_options()


def test_tls_beside_the_broker_unless_the_results_have_their_own() -> None:
    app = _app(broker="rediss://h:6380/0",
               broker_use_ssl={"ssl_cert_reqs": "none", "ssl_ca_certs": "/ca.pem"})
    opts = app.conf.result_options()
    assert (opts["ssl_cert_reqs"], opts["ssl_ca_certs"]) == ("none", "/ca.pem")
    app.conf.redis_backend_use_ssl = {"ssl_cert_reqs": "required"}
    opts = app.conf.result_options()
    assert opts["ssl_cert_reqs"] == "required" and "ssl_ca_certs" not in opts


def test_events_beside_a_django_result_store_use_the_broker_options() -> None:
    app = _app(broker_transport_options={"prefix": "shop", "wait_replicas": 1},
               result_backend="django-db")
    assert _options_for(app, app.conf.broker_url)["prefix"] == "shop"


def test_a_non_redis_broker_lends_no_options() -> None:
    app = _app(broker="memory://", result_backend="redis://h:6379/0")
    assert app.conf.result_options() == {}


def test_beat_history_reads_the_brokers_client_options() -> None:
    """It used to get broker_transport_options alone: no TLS from broker_use_ssl,
    no connect timeout, and the broker-only keys parsed again."""
    from conveyor.beat.state import open_beat_state

    app = _app(broker="rediss://h:6380/0", broker_use_ssl={"ssl_cert_reqs": "none"},
               broker_connection_timeout=1.5,
               broker_transport_options={"prefix": "shop", "wait_replicas": 1,
                                         "priority_steps": [0, 5]})
    state: Any = open_beat_state(app)
    kwargs = state._holder.options.client_kwargs
    assert (kwargs["ssl_cert_reqs"], kwargs["socket_connect_timeout"]) == ("none", 1.5)
    assert state._last_run == "shop:beat:last_run"
