"""RabbitMQ URL forms, transport options and the delay ladder's arithmetic.

URL forms follow kombu's (``amqp://user:password@host:port/vhost``, ``//``
for the ``/`` vhost): /work/ref/kombu/kombu/utils/url.py and Celery's broker
docs.  The ladder is docs/decisions/0016-rabbitmq-broker.md; delays of days
are checked here by arithmetic (simulated), short ones in the broker contract.
"""

from __future__ import annotations

import re

import pytest

from conveyor import Conveyor, Queue, _amqp
from conveyor.exceptions import ConfigurationError

STATE = {"state_url": "sqlite:///state.db"}


@pytest.mark.parametrize(("url", "vhost", "port", "tls"), [
    ("amqp://guest:guest@localhost:5672//", "/", 5672, False),
    ("amqp://guest:guest@localhost", "/", 5672, False),
    ("pyamqp://u:p@h/orders", "orders", 5672, False),
    ("amqps://u:p@h/team%2Fa", "team/a", 5671, True),
])
def test_celery_url_forms(url: str, vhost: str, port: int, tls: bool) -> None:
    o = _amqp.parse_amqp_url(url, STATE)
    assert (o.vhost, o.port, o.tls) == (vhost, port, tls)


def test_place_never_shows_the_password() -> None:
    o = _amqp.parse_amqp_url("amqp://me:s3cret@h/v", STATE)
    assert "s3cret" not in o.place and "me@h" in o.place


@pytest.mark.parametrize(("options", "named"), [
    ({"visibility_timeout": 10}, "visibility_timeout"),
    ({"confirm_publish": False}, "confirm_publish"),
    ({"queue_type": "stream"}, "queue_type"),
    ({"heartbeat": "often"}, "heartbeat"),
    ({"blocked_connection_timeout": 0}, "blocked_connection_timeout"),
    ({"blocked_connection_timeout": "never"}, "blocked_connection_timeout"),
    ({"revocations_kept": -1}, "revocations_kept"),
])
def test_options_that_do_not_apply_are_refused_by_name(options: dict, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        _amqp.parse_amqp_url("amqp://h//", {**STATE, **options})


def test_blocked_connection_timeout_defaults_to_a_minute_and_reads_the_url() -> None:
    assert _amqp.parse_amqp_url("amqp://h//", STATE).blocked_connection_timeout == 60.0
    url = "amqp://h//?blocked_connection_timeout=2.5&state_url=sqlite:///s.db"
    assert _amqp.parse_amqp_url(url).blocked_connection_timeout == 2.5


def test_the_revocation_stream_keeps_a_week_unless_told() -> None:
    from conveyor import _amqp_revocations

    assert _amqp.parse_amqp_url("amqp://h//", STATE).revocations_kept == 7 * 86400
    url = "amqp://h//?revocations_kept=3600&state_url=sqlite:///s.db"
    kept = _amqp.parse_amqp_url(url).revocations_kept
    assert _amqp_revocations.stream_arguments(kept)["x-max-age"] == "3600s"


def test_the_side_store_is_required_and_defaults_to_the_result_backend() -> None:
    with pytest.raises(ConfigurationError, match="state_url"):
        _amqp.parse_amqp_url("amqp://h//", {})
    app = Conveyor("x", broker="amqp://h//", backend="redis://r:6379/1", set_as_current=False)
    assert app.conf.broker_options()["state_url"] == "redis://r:6379/1"


def test_a_side_store_in_the_url_is_not_replaced_by_the_result_backend() -> None:
    app = Conveyor("x", broker="amqp://h//?state_url=sqlite:///keys.db",
                   backend="redis://r:6379/1", set_as_current=False)
    options = app.conf.broker_options()
    assert "state_url" not in options
    assert _amqp.parse_amqp_url(app.conf.broker_url, options).state_url == "sqlite:///keys.db"


def test_classic_queues_have_priorities_only_with_task_queue_max_priority() -> None:
    """As Celery: ``x-max-priority`` only when a maximum is set (ADR 0041); the
    setting is named in the startup warning only where it has no effect."""
    def arguments(broker: str, **conf: object) -> dict:
        app = Conveyor("x", broker=broker, backend="redis://r:6379/1", set_as_current=False,
                       **conf)
        opts = _amqp.parse_amqp_url(app.conf.broker_url, app.conf.broker_options())
        return _amqp.work_queue_arguments(opts, "q")

    classic = "amqp://h//?queue_type=classic"
    assert "x-max-priority" not in arguments(classic)
    assert arguments(classic, task_queue_max_priority=9)["x-max-priority"] == 9
    assert "x-max-priority" not in arguments("amqp://h//", task_queue_max_priority=9)
    assert arguments(f"{classic}&max_priority=5")["x-max-priority"] == 5
    with pytest.raises(ConfigurationError, match=r"1\.\.255"):
        arguments(classic, task_queue_max_priority=300)
    # Quorum queues have none: the transport option is refused, not ignored.
    with pytest.raises(ConfigurationError, match=r"max_priority.*quorum"):
        arguments("amqp://h//?max_priority=9")
    for broker, warned in ((classic, False), ("amqp://h//", True), ("redis://r", True)):
        app = Conveyor("x", broker=broker, backend="redis://r:6379/1", set_as_current=False,
                       task_queue_max_priority=9)
        assert ("task_queue_max_priority" in app.conf.no_effect_set()) is warned


def test_results_beside_rabbitmq_name_the_setting_to_use() -> None:
    app = Conveyor("x", broker="amqp://u:pw@h//", set_as_current=False)
    with pytest.raises(ConfigurationError, match="result_backend") as err:
        _ = app.backend
    assert "pw" not in str(err.value)


@pytest.mark.parametrize("seconds", [0.01, 0.8, 59.99, 3600.0, 86400 * 30.0])
def test_delay_ladder_spells_every_delay_from_10ms_to_30_days(seconds: float) -> None:
    ticks = _amqp.delay_ticks(seconds)
    key = _amqp.delay_routing_key(ticks)
    words = key.split(".")
    assert len(words) == _amqp.LEVELS
    # The levels a message passes through (bit set: waits there 2**level ticks).
    waited = sum(2**level for level in range(_amqp.LEVELS)
                 if _routes(key, _amqp.level_pattern(level, "1")))
    assert waited == ticks
    assert seconds <= waited * _amqp.TICK < seconds + _amqp.TICK  # never early


def test_delays_beyond_the_ladder_are_capped_and_go_round_again() -> None:
    assert _amqp.delay_ticks(86400 * 365.0) == _amqp.MAX_TICKS
    assert _amqp.MAX_TICKS * _amqp.TICK > 86400 * 31


def _routes(key: str, pattern: str) -> bool:
    """A topic binding match ('*' one word, '#' zero or more), as RabbitMQ does."""
    rx = pattern.replace(".", r"\.").replace("*", r"[^.]+").replace(r"\.#", r"(\..*)?")
    return re.fullmatch(rx, key) is not None


def test_a_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from conveyor.brokers import broker_from_url

    monkeypatch.setitem(sys.modules, "pika", None)
    monkeypatch.delitem(sys.modules, "conveyor.brokers.amqp", raising=False)
    with pytest.raises(ConfigurationError, match=r"conveyor\[rabbitmq\]"):
        broker_from_url("amqp://h//", STATE)


def test_beat_history_goes_to_the_side_store(tmp_path: object) -> None:
    from conveyor.beat_state import SQLiteBeatState, open_beat_state

    app = Conveyor("x", broker="amqp://h//", backend=f"sqlite:///{tmp_path}/r.db",
                   set_as_current=False)
    assert isinstance(open_beat_state(app), SQLiteBeatState)
    bare = Conveyor("x", broker="amqp://u:pw@h//", set_as_current=False)
    with pytest.raises(ConfigurationError, match="result_backend"):
        open_beat_state(bare)
    # state_url in the URL's query, which the broker reads too
    query = Conveyor("x", broker=f"amqp://h//?state_url=sqlite:///{tmp_path}/s.db",
                     set_as_current=False)
    assert isinstance(open_beat_state(query), SQLiteBeatState)


def test_remote_control_goes_through_rabbitmq_whatever_the_side_store(tmp_path: object) -> None:
    """ADR 0023: the fanout exchange, not the side store (which may not exist)."""
    from conveyor.control import channel_for
    from conveyor.control.amqp import AMQPChannel

    state = f"sqlite:///{tmp_path}/state.db"
    assert isinstance(channel_for("amqp://h//", {"state_url": state}), AMQPChannel)
    assert isinstance(channel_for("amqp://h//", {}), AMQPChannel)


@pytest.mark.parametrize(("lease", "heartbeat"), [(30, 15), (2, 1), (3, 1), (1, 1), (0.5, 1),
                                                  (301, 150)])
def test_a_consuming_connection_s_heartbeat_is_half_the_lease(lease: float,
                                                               heartbeat: int) -> None:
    """Whole seconds (AMQP's unit), at least one: RabbitMQ gives a silent client
    up after two to three of them, so within one to one and a half leases."""
    assert _amqp.lease_heartbeat(lease) == heartbeat


def test_a_heartbeat_set_in_the_options_wins_over_the_lease_s() -> None:
    from conveyor._amqp_link import connection_parameters

    derived = _amqp.parse_amqp_url("amqp://h/v", STATE)
    assert connection_parameters(derived).heartbeat is None  # the server's
    assert connection_parameters(derived, 7).heartbeat == 7
    for explicit in (0, 20):  # 0: heartbeats off, as asked
        o = _amqp.parse_amqp_url(f"amqp://h/v?heartbeat={explicit}", STATE)
        assert connection_parameters(o, 7).heartbeat == explicit


def _kombu_queues() -> list:
    """Celery's routing guide's two forms, and kombu's ``max_priority`` (fresh objects:
    Celery's ``Queues._add`` writes ``task_queue_max_priority`` into the ones it gets)."""
    kombu = pytest.importorskip("kombu")
    return [kombu.Queue("tasks", kombu.Exchange("tasks"), routing_key="tasks",
                        queue_arguments={"x-max-priority": 10}),
            kombu.Queue("own", max_priority=3),
            kombu.Queue("both", max_priority=7, queue_arguments={"x-max-priority": 2}),
            kombu.Queue("plain")]


@pytest.mark.parametrize("app_wide", [None, 5])
def test_a_queue_s_own_maximum_is_declared_and_wins_as_in_celery(app_wide: int | None) -> None:
    """A ``task_queues`` entry's own maximum reaches the work queue's declaration through
    the same options as ``task_queue_max_priority`` (ADR 0041), with Celery's result.

    Celery: ``task_queue_max_priority`` is ``Option(None, type='int')``
    (celery/app/defaults.py), and ``app.amqp.Queues`` writes it into a queue's
    ``queue_arguments`` only where ``'x-max-priority'`` is not there
    (celery/app/amqp.py ``Queues._set_max_priority``); kombu's ``Queue.queue_declare``
    passes ``max_priority=`` to ``prepare_queue_arguments``, whose RabbitMQ form
    (kombu/transport/base.py ``to_rabbitmq_queue_arguments``) merges it over the
    queue arguments.  The expected maxima are what Celery itself computes."""
    celery = pytest.importorskip("celery")
    from kombu.transport.base import to_rabbitmq_queue_arguments

    reference = celery.Celery("ref", set_as_current=False)
    reference.conf.update(task_queues=_kombu_queues(), task_queue_max_priority=app_wide)
    expected = {name: to_rabbitmq_queue_arguments(q.queue_arguments or {},
                                                  max_priority=q.max_priority)
                .get("x-max-priority") for name, q in reference.amqp.queues.items()}
    assert expected == {"tasks": 10, "own": 3, "both": 7, "plain": app_wide}

    app = Conveyor("x", broker="amqp://h//?queue_type=classic", backend="redis://r:6379/1",
                   set_as_current=False, task_queues=_kombu_queues(),
                   task_queue_max_priority=app_wide)
    opts = _amqp.parse_amqp_url(app.conf.broker_url, app.conf.broker_options())
    declared = {name: _amqp.work_queue_arguments(opts, name).get("x-max-priority")
                for name in [*expected, "unlisted"]}
    assert declared == {**expected, "unlisted": app_wide}
    assert [_amqp.ordered(opts, name) for name in declared] == [
        True, True, True, app_wide is not None, app_wide is not None]
    assert "task_queue_max_priority" not in app.conf.no_effect_set()


def test_a_queue_s_own_maximum_is_checked_as_the_app_wide_one_is() -> None:
    """1..255, RabbitMQ's range, and the queue named; the transport option that
    carries the maxima is refused with quorum queues, as ``max_priority`` is."""
    def options(broker: str, queue: Queue) -> _amqp.AMQPOptions:
        app = Conveyor("x", broker=broker, backend="redis://r:6379/1", set_as_current=False,
                       task_queues=[queue])
        return _amqp.parse_amqp_url(app.conf.broker_url, app.conf.broker_options())

    classic = "amqp://h//?queue_type=classic"
    for bad in (0, 300, "10"):
        with pytest.raises(ConfigurationError, match=r"queue 'urgent'.*1\.\.255"):
            options(classic, Queue("urgent", queue_arguments={"x-max-priority": bad}))
    with pytest.raises(ConfigurationError, match=r"queue 'urgent'.*quorum.*queue_type='classic'"):
        _amqp.parse_amqp_url("amqp://h//", {**STATE, "queue_max_priority": {"urgent": 9}})
    # Quorum queues, Conveyor's default: as task_queue_max_priority there, the maximum
    # is not declared and the startup warning names it.
    quorum = options("amqp://h//", Queue("urgent", max_priority=9))
    assert quorum.queue_max_priority == {} and not _amqp.ordered(quorum, "urgent")


@pytest.mark.parametrize(("broker", "named", "why"), [
    ("amqp://h//?queue_type=classic", "exchange, queue_arguments['x-message-ttl'], "
     "routing_key", "publishes to each queue by name"),
    ("amqp://h//", "exchange, max_priority, queue_arguments['x-max-priority'], "
     "queue_arguments['x-message-ttl'], routing_key", "quorum queues have no priorities"),
    ("redis://r:6379/0", "exchange, max_priority, queue_arguments['x-max-priority'], "
     "queue_arguments['x-message-ttl'], routing_key", "priorities are always 0..9"),
    ("sqlite:///c.db", "exchange, max_priority, queue_arguments['x-max-priority'], "
     "queue_arguments['x-message-ttl'], routing_key", "SQLite, Redis and PostgreSQL"),
    ("postgresql://u@h/db", "exchange, max_priority, queue_arguments['x-max-priority'], "
     "queue_arguments['x-message-ttl'], routing_key", "addressed by name"),
])
def test_the_startup_warning_names_what_this_broker_does_not_use(
        broker: str, named: str, why: str) -> None:
    """Every ``task_queues`` field is honoured or named in the worker's one startup
    warning; which ones depends on the broker, known when the worker starts."""
    app = Conveyor("x", broker=broker, backend="redis://r:6379/1", set_as_current=False,
                   task_queues=[Queue("tasks", exchange="tasks", routing_key="tasks",
                                      queue_arguments={"x-max-priority": 10,
                                                       "x-message-ttl": 1000}),
                                Queue("own", max_priority=3)])
    said = app.conf.no_effect_set()["task_queues"]
    assert said.startswith(f"no effect here for {named}: ") and why in said
    plain = Conveyor("x", broker="amqp://h//?queue_type=classic", backend="redis://r:6379/1",
                     set_as_current=False, task_queues=[Queue("own", max_priority=3)])
    assert "task_queues" not in plain.conf.no_effect_set()
