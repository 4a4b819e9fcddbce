"""Each storage family opens what its scheme table or an entry point names (issue 17).

A third-party backend is one class plus one entry point: these tests
register fakes through the entry-point lookup and open them by URL, with
each family's calling convention (docs/architecture.md, "Adding a backend").
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from conveyor import schemes
from conveyor._events import store_from_url
from conveyor.brokers import broker_from_url
from conveyor.control import channel_for
from conveyor.exceptions import ConfigurationError
from conveyor.resultstores import result_store_from_url


class Made:
    """Records how a family called its entry."""

    takes_transport_options = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class MadeWithoutOptions(Made):
    takes_transport_options = False


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    here = f"{__name__}:Made"
    points = {
        "conveyor.brokers": [EntryPoint("fake", here, "conveyor.brokers"),
                             EntryPoint("redis", here, "conveyor.brokers")],
        "conveyor.result_stores": [EntryPoint("fake", here, "conveyor.result_stores"),
                                   EntryPoint("bare", f"{__name__}:MadeWithoutOptions",
                                              "conveyor.result_stores")],
        "conveyor.event_stores": [EntryPoint("fake", here, "conveyor.event_stores")],
        "conveyor.control_channels": [EntryPoint("fake", here, "conveyor.control_channels")],
    }
    monkeypatch.setattr(schemes, "entry_points", lambda group: points.get(group, []))
    schemes._plugins.cache_clear()
    yield
    schemes._plugins.cache_clear()


def test_each_family_opens_a_plugin_with_its_calling_convention(plugins: None) -> None:
    broker: Any = broker_from_url("fake://h", {"a": 1, "priority_steps": [0]})
    assert isinstance(broker, Made) and broker.args == ("fake://h",)
    assert broker.kwargs == {"a": 1}  # priority_steps is the app's, not the broker's
    store: Any = result_store_from_url("fake://h", {"b": 2})
    assert isinstance(store, Made) and (store.args, store.kwargs) == (("fake://h",), {"b": 2})
    events: Any = store_from_url("fake://h", 60.0, {"c": 3})
    assert isinstance(events, Made)
    assert (events.args, events.kwargs) == (("fake://h", 60.0), {"options": {"c": 3}})
    channel: Any = channel_for("fake://h", {"d": 4})
    assert isinstance(channel, Made) and channel.args == ("fake://h", {"d": 4})


def test_a_plugin_never_shadows_a_shipped_scheme(plugins: None) -> None:
    from conveyor.brokers import BROKERS
    from conveyor.brokers.redis import RedisBroker

    assert BROKERS.load("redis", setting="broker_url") is RedisBroker


def test_transport_options_are_refused_for_a_store_that_takes_none(plugins: None) -> None:
    assert isinstance(result_store_from_url("bare://h"), MadeWithoutOptions)
    with pytest.raises(ConfigurationError, match="result_backend_transport_options"):
        result_store_from_url("bare://h", {"prefix": "x"})
    with pytest.raises(ConfigurationError, match=r"\(prefix\) apply to Redis result stores"):
        result_store_from_url("memory://", {"prefix": "x"})


@pytest.mark.parametrize(("open_", "setting", "advice"), [
    (broker_from_url, "broker_url", "use sqlite:///path.db"),
    (result_store_from_url, "result_backend", "memory:// or django-db"),
    (store_from_url, "task events", "events need sqlite, postgresql, redis or memory"),
    (channel_for, "broker_url", "remote control is not available"),
])
def test_an_unknown_scheme_names_the_setting_and_what_to_write(
        open_: Any, setting: str, advice: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_("ftp://user:secret@h/x")
    text = str(caught.value)
    assert setting in text and "'ftp'" in text and advice in text
    assert "secret" not in text


@pytest.mark.parametrize(("open_", "what"), [
    (result_store_from_url, "results"), (store_from_url, "task events"),
])
def test_rabbitmq_keeps_no_records(open_: Any, what: str) -> None:
    """ADR 0016: results and events go to the side store, never RabbitMQ."""
    with pytest.raises(ConfigurationError, match="cannot be kept in RabbitMQ") as caught:
        open_("amqp://h//")
    assert what in str(caught.value)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgresql_urls_open_the_postgres_event_store(scheme: str) -> None:
    """Issue 19: one PostgreSQL database carries task events too (the store connects
    on first use, so opening one here needs no server)."""
    from conveyor.eventstores.postgres import PostgresEventStore

    store = store_from_url(f"{scheme}://h/db")
    assert isinstance(store, PostgresEventStore)
    store.close()
