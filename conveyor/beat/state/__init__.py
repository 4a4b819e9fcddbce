"""Beat's run history stores, one module each, chosen by the broker URL's scheme.

``open_beat_state`` finds the store beside the broker through the scheme
registry (``conveyor/schemes.py``): the shipped schemes below, plus any a
distribution declares under the ``conveyor.beat_states`` entry-point group,
which must name a :class:`BeatState` class (or factory) called as
``(url, options)``, the broker's transport options::

    [project.entry-points."conveyor.beat_states"]
    mydb = "mypackage.beat:MyDbBeatState"

A RabbitMQ broker keeps no records, so beat's history goes to its side store
(``broker_transport_options['state_url']``, by default the result backend;
ADR 0016).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor._amqp import not_in_rabbitmq, parse_amqp_url
from conveyor.beat.state.base import (
    ALIVE_AT,
    CUTOFF,
    SCHEDULER,
    BeatState,
    EntryRuns,
    from_micros,
    to_micros,
)
from conveyor.schemes import Family, is_amqp, scheme_of

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["ALIVE_AT", "CUTOFF", "FAMILY", "SCHEDULER", "BeatState", "EntryRuns",
           "from_micros", "open_beat_state", "to_micros"]

_REDIS = "conveyor.beat.state.redis:RedisBeatState"
_POSTGRES = "conveyor.beat.state.postgres:PostgresBeatState"

#: Beat-history stores by URL scheme: the same schemes as the brokers that keep one.
FAMILY = Family("beat history store", "conveyor.beat_states", {
    "memory": "conveyor.beat.state.memory:MemoryBeatState",
    "sqlite": "conveyor.beat.state.sqlite:SQLiteBeatState",
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "sentinel": _REDIS,
    "redis+cluster": _REDIS,
    "postgresql": _POSTGRES,
    "postgres": _POSTGRES,
})


def open_beat_state(app: Conveyor) -> BeatState:
    """The history store beside ``app``'s broker (chosen by the broker URL's scheme)."""
    url = app.conf.broker_url
    # The broker's own client options (TLS from broker_use_ssl, the connect
    # timeout), as the broker and every other store beside it read them.
    options = app.conf.broker_options()
    setting = "broker_url"
    if is_amqp(url):  # RabbitMQ keeps no records: use its side store (ADR 0016)
        # Given in the options or in the URL's query, as the broker reads it.
        state = parse_amqp_url(url, options, need_state=False).state_url
        if not state:
            raise not_in_rabbitmq("beat's run history")
        url, options = str(state), {}
        setting = "broker_transport_options['state_url']"
    store = FAMILY.load(scheme_of(url), setting=setting, url_for_error=url)
    found: BeatState = store(url, options)
    return found
