"""``open_beat_state`` chooses the history store through the scheme registry.

The shipped schemes are the brokers that keep records; a package adds one
under the ``conveyor.beat_states`` entry-point group; RabbitMQ's history goes
to its side store (``test_amqp_options.py::test_beat_history_goes_to_the_side_store``).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from conveyor import Conveyor, schemes
from conveyor.beat.state import FAMILY, open_beat_state
from conveyor.beat.state.memory import MemoryBeatState
from conveyor.exceptions import ConfigurationError


class PluggedState(MemoryBeatState):
    """A third-party store: remembers what it was opened with."""

    opened: tuple[str, dict[str, Any]] | None = None

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        PluggedState.opened = (url, dict(options or {}))


@pytest.fixture
def plugged(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    points = [EntryPoint("mydb", f"{__name__}:PluggedState", "conveyor.beat_states"),
              EntryPoint("sqlite", f"{__name__}:PluggedState", "conveyor.beat_states")]
    monkeypatch.setattr(schemes, "entry_points",
                        lambda group: points if group == "conveyor.beat_states" else [])
    schemes._plugins.cache_clear()
    yield
    schemes._plugins.cache_clear()


def app_on(url: str, **conf: Any) -> Conveyor:
    return Conveyor("registry", broker=url, set_as_current=False, **conf)


def test_the_family_is_registered_under_its_entry_point_group() -> None:
    assert FAMILY.group == "conveyor.beat_states"
    assert {"memory", "sqlite", "redis", "rediss", "unix", "sentinel", "postgresql",
            "postgres"} <= set(FAMILY.schemes())


def test_an_unknown_scheme_names_the_setting_and_the_known_ones_and_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_beat_state(app_on("ftp://user:secret@h/"))
    text = str(caught.value)
    assert "broker_url" in text and "'ftp'" in text and "sqlite" in text and "redis" in text
    assert "secret" not in text


def test_a_plugged_in_store_is_opened_with_the_url_and_transport_options(plugged: None) -> None:
    state = open_beat_state(app_on("mydb://h/x", broker_transport_options={"a": 1}))
    try:
        assert type(state) is PluggedState
        assert PluggedState.opened == ("mydb://h/x", {"a": 1})
    finally:
        state.close()


def test_a_plug_in_cannot_shadow_a_shipped_scheme(plugged: None, tmp_path: Any) -> None:
    from conveyor.beat.state.sqlite import SQLiteBeatState

    state = open_beat_state(app_on(f"sqlite:///{tmp_path}/b.db"))
    try:
        assert type(state) is SQLiteBeatState
    finally:
        state.close()
