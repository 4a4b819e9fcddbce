"""Every Celery setting name loads; values are checked from every source; app.conf is a mapping.

Celery: app/defaults.py holds the table of setting names (read into
tests/unit/data/celery_settings.txt); app/utils.py Settings is the mapping
``app.conf`` (update, [], get, setdefault, in, iteration).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import ssl
import types
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import Conveyor
from conveyor._config import Settings, values_from_env
from conveyor._no_effect import NO_EFFECT
from conveyor.exceptions import ConfigurationError

DATA = Path(__file__).parent / "data" / "celery_settings.txt"
PACKAGE = Path(conveyor.__file__).parent


def celery_settings() -> list[tuple[str, Any]]:
    rows = []
    for line in DATA.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sample = line.split("\t")
            rows.append((name, json.loads(sample)))
    return rows


def make_app(**settings: Any) -> Conveyor:
    return Conveyor("settings-test", broker=f"memory://{uuid.uuid4().hex}",
                    set_as_current=False, **settings)


# -- Celery's whole table ------------------------------------------------------

def test_the_data_file_holds_celerys_whole_table() -> None:
    """Celery 5.6.2's app/defaults.py flattens to 198 names."""
    names = [name for name, _ in celery_settings()]
    assert len(names) == len(set(names)) == 198


@pytest.mark.parametrize("namespace", ["CELERY", None])
def test_every_celery_setting_name_loads(namespace: str | None) -> None:
    """Each name loads through config_from_object (namespaced upper-case form, and the
    plain lower-case form of a celeryconfig module) and reads back from app.conf."""
    implemented, no_effect, refused = [], [], []
    for name, sample in celery_settings():
        app = make_app()
        if namespace:
            source: Any = {f"{namespace}_{name.upper()}": sample}
        else:
            source = types.ModuleType("celeryconfig")
            setattr(source, name, sample)
        try:
            app.config_from_object(source, namespace=namespace)
        except ConfigurationError as exc:
            refused.append(f"{name}: {exc}")
            continue
        value = app.conf[name]
        if name == "task_queues":  # names read back as conveyor.Queue objects
            value = [queue.name for queue in value]
        assert value == sample, name  # ints read back as floats where seconds are meant
        if name in NO_EFFECT:
            warned = name in app.conf.no_effect_set()
            assert warned == (sample != NO_EFFECT[name].default), name
            no_effect.append(name)
        else:
            assert name in Settings.names()
            implemented.append(name)
    assert refused == []
    assert (len(implemented), len(no_effect)) == (COUNTS["implemented"], COUNTS["no_effect"])


# The counts the migration guide quotes (docs/migrating-from-celery.md, "Settings").
COUNTS = {"implemented": 61, "no_effect": 137, "refused": 0}


def test_every_no_effect_name_is_a_celery_name_with_a_reason() -> None:
    celery = {name for name, _ in celery_settings()}
    for name, entry in NO_EFFECT.items():
        assert name in celery, name
        assert len(entry.reason) > 15, name


# -- no field is parsed and then dropped ------------------------------------------

def _conf_reads(tree: ast.AST) -> set[str]:
    """Names read as ``conf.x``, ``x.conf.x`` or ``settings.x`` (the settings object)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id in ("conf", "settings")) or (
                    isinstance(owner, ast.Attribute) and owner.attr == "conf"):
                found.add(node.attr)
    return found


def _reads_by_settings_methods() -> dict[str, set[str]]:
    """For each method or property of Settings: the fields it reads."""
    tree = ast.parse((PACKAGE / "_config.py").read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    out: dict[str, set[str]] = {}
    for fn in cls.body:
        if isinstance(fn, ast.FunctionDef):
            names = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)
                     and isinstance(n.value, ast.Name) and n.value.id == "self"}
            names |= {n.value for n in ast.walk(fn) if isinstance(n, ast.Constant)
                      and isinstance(n.value, str)}
            out[fn.name] = names
    return out


def test_every_settings_field_is_read_by_the_code_or_listed_as_no_effect() -> None:
    read: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("_config.py", "_no_effect.py"):
            read |= _conf_reads(ast.parse(path.read_text()))
    for method, names in _reads_by_settings_methods().items():
        if method in read:  # e.g. conf.broker_options() reads broker_use_ssl
            read |= names
    dropped = [name for name in Settings.names() if name not in read and name not in NO_EFFECT]
    assert dropped == []
    # A field the code reads has an effect: its no-effect entry is stale (e.g. left behind
    # when a branch that implements an "owned by slice" name is merged).
    stale = [name for name in Settings.names() if name in read and name in NO_EFFECT]
    assert stale == []


# -- unknown names -----------------------------------------------------------------

def test_an_unknown_name_is_refused_with_a_suggestion_from_every_entry_point(
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    hint = "did you mean task_acks_late?"
    attempts = [
        lambda: app.config_from_object({"CELERY_TASK_ACK_LATE": True}, namespace="CELERY"),
        lambda: app.config_from_object({"task_ack_late": True}, namespace=None),
        lambda: app.conf.update(task_ack_late=True),
        lambda: app.conf.update({"task_ack_late": True}),
        lambda: app.conf.__setitem__("task_ack_late", True),
        lambda: setattr(app.conf, "task_ack_late", True),
        lambda: make_app(task_ack_late=True),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigurationError, match=hint):
            attempt()
    with pytest.raises(KeyError, match=hint):
        app.conf["task_ack_late"]
    with pytest.raises(KeyError, match=hint):
        app.conf.get("task_ack_late")
    with pytest.raises(KeyError, match=hint):
        app.conf.setdefault("task_ack_late", True)
    with pytest.raises(AttributeError, match=hint):
        app.conf.task_ack_late  # noqa: B018
    assert "task_ack_late" not in app.conf
    monkeypatch.setenv("CONVEYOR_TASK_ACKS_LAT", "true")
    with pytest.raises(ConfigurationError, match=hint):
        app.config_from_env()


def test_environment_variables_that_are_not_near_a_setting_are_left_alone() -> None:
    """CONVEYOR_APP (the CLI's -A) shares the prefix and is not a setting."""
    assert values_from_env({"CONVEYOR_APP": "proj", "CONVEYOR_TEST_REDIS_DB": "1"}) == {}


# -- values are checked, from every source -------------------------------------------

@pytest.mark.parametrize("value", [-1, -0.5, math.nan, timedelta(seconds=-3), "10", True])
def test_a_bad_duration_is_refused_naming_the_key_from_every_source(value: Any) -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="CELERY_\\* settings: task_time_limit"):
        app.config_from_object({"CELERY_TASK_TIME_LIMIT": value}, namespace="CELERY")
    with pytest.raises(ConfigurationError, match="settings: task_time_limit"):
        app.config_from_object(types.SimpleNamespace(task_time_limit=value), namespace=None)
    with pytest.raises(ConfigurationError, match=r"app\.conf: task_time_limit"):
        app.conf.task_time_limit = value
    with pytest.raises(ConfigurationError, match=r"app\.conf: task_time_limit"):
        app.conf["task_time_limit"] = value
    assert app.conf.task_time_limit is None  # nothing half-applied


def test_environment_values_are_parsed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    monkeypatch.setenv("CONVEYOR_TASK_TIME_LIMIT", "-5")
    with pytest.raises(ConfigurationError, match="environment: task_time_limit must be at least 0"):
        app.config_from_env()
    monkeypatch.setenv("CONVEYOR_TASK_TIME_LIMIT", "nan")
    with pytest.raises(ConfigurationError, match="task_time_limit must be a number, got NaN"):
        app.config_from_env()
    monkeypatch.setenv("CONVEYOR_TASK_TIME_LIMIT", "90")
    monkeypatch.setenv("CONVEYOR_TASK_ACKS_LATE", "maybe")
    with pytest.raises(ConfigurationError, match="CONVEYOR_TASK_ACKS_LATE: expected true/false"):
        app.config_from_env()
    monkeypatch.setenv("CONVEYOR_TASK_ACKS_LATE", "off")
    monkeypatch.setenv("CONVEYOR_WORKER_DIRECT", "yes")  # a no-effect name: parsed as well
    app.config_from_env()
    assert (app.conf.task_time_limit, app.conf.task_acks_late) == (90.0, False)
    assert app.conf.worker_direct is True


def test_no_effect_names_are_type_checked_too() -> None:
    conf = Settings()
    with pytest.raises(ConfigurationError, match="worker_lost_wait must be at least 0"):
        conf.update(worker_lost_wait=-1)
    with pytest.raises(ConfigurationError, match="worker_direct must be bool, got str"):
        conf.update(worker_direct="yes")
    with pytest.raises(ConfigurationError, match="worker_concurrency must be above 0"):
        conf.update(worker_concurrency=0)


# -- app.conf as a mapping ------------------------------------------------------------

def test_app_conf_is_a_mapping_as_celerys_is() -> None:
    conf = make_app().conf
    conf.update({"task_default_queue": "orders"}, worker_prefetch_multiplier=1)
    conf.update([("result_expires", timedelta(hours=1))])
    assert (conf["task_default_queue"], conf.worker_prefetch_multiplier) == ("orders", 1)
    assert conf.get("result_expires") == 3600.0
    conf["timezone"] = "Europe/Paris"
    assert conf.timezone == "Europe/Paris"
    # setdefault changes only a name nobody set
    assert conf.setdefault("timezone", "Asia/Tokyo") == "Europe/Paris"
    assert conf.setdefault("task_default_retry_delay", 5) == 5.0
    assert "broker_url" in conf and "worker_direct" in conf and "nonsense" not in conf
    keys = list(conf)
    assert keys == conf.keys() and len(keys) == len(conf)
    assert {"broker_url", "task_always_eager", "cassandra_servers"} <= set(keys)
    assert dict(conf.items())["task_default_queue"] == "orders"
    assert conf["worker_direct"] is False  # Celery's default for a no-effect name


def test_attribute_assignment_is_validated_and_takes_effect() -> None:
    """Celery: app.conf.task_always_eager = True sets the setting.  Here the value is
    checked like any other, and a changed broker_url reopens the connection."""
    app = make_app()
    first = app.broker
    app.conf.broker_url = f"memory://{uuid.uuid4().hex}"
    assert app.broker is not first and app.broker.url == app.conf.broker_url
    app.conf.task_always_eager = True
    assert app.conf.task_always_eager is True
    assert "task_always_eager" not in app.conf.no_effect_set(), "honoured (conveyor._eager)"
    with pytest.raises(ConfigurationError, match="task_always_eager must be bool"):
        app.conf.task_always_eager = "yes"


# -- the startup warning --------------------------------------------------------------

def test_a_worker_names_every_no_effect_setting_in_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    from conveyor.testing import run_worker

    app = make_app()
    app.config_from_object({"CELERY_WORKER_DIRECT": True, "CELERY_BROKER_HEARTBEAT": 10,
                            "CELERY_TASK_DEFAULT_QUEUE": "default",
                            "CELERY_TASK_ALWAYS_EAGER": False},  # Celery's default: asks nothing
                           namespace="CELERY")
    with caplog.at_level(logging.WARNING, logger="conveyor.config"), \
            run_worker(app, concurrency=1):
        pass
    records = [r for r in caplog.records if r.name == "conveyor.config"]
    assert len(records) == 1
    text = records[0].getMessage()
    assert text.startswith("2 setting(s) have no effect in Conveyor: broker_heartbeat (")
    assert "worker_direct (AMQP topology" in text and "task_default_queue" not in text


def test_a_worker_says_nothing_when_no_such_setting_was_set(
        caplog: pytest.LogCaptureFixture) -> None:
    from conveyor.testing import run_worker

    with caplog.at_level(logging.WARNING, logger="conveyor.config"), \
            run_worker(make_app(), concurrency=1):
        pass
    assert [r for r in caplog.records if r.name == "conveyor.config"] == []


# -- a Django project's settings, as project templates write them -----------------------

def django_settings(url: str) -> types.SimpleNamespace:
    tls = url.startswith("rediss://")
    use_ssl = {"ssl_cert_reqs": ssl.CERT_NONE} if tls else None
    return types.SimpleNamespace(
        DEBUG=False, CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url,
        CELERY_RESULT_EXTENDED=True, CELERY_RESULT_BACKEND_ALWAYS_RETRY=True,
        CELERY_RESULT_BACKEND_MAX_RETRIES=10, CELERY_ACCEPT_CONTENT=["json"],
        CELERY_TASK_SERIALIZER="json", CELERY_RESULT_SERIALIZER="json",
        CELERY_TASK_TIME_LIMIT=5 * 60, CELERY_TASK_SOFT_TIME_LIMIT=60,
        CELERY_BEAT_SCHEDULER="django_celery_beat.schedulers:DatabaseScheduler",
        CELERY_WORKER_SEND_TASK_EVENTS=True, CELERY_TASK_SEND_SENT_EVENT=True,
        CELERY_WORKER_HIJACK_ROOT_LOGGER=False, CELERY_BROKER_USE_SSL=use_ssl,
        CELERY_REDIS_BACKEND_USE_SSL=use_ssl, CELERY_TIMEZONE="UTC",
    )


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://localhost:6380/0"])
def test_a_django_project_templates_celery_settings_load(url: str) -> None:
    """The settings a popular Django project template writes (TLS options only for
    rediss://, None otherwise) load, and reach the clients' options."""
    app = make_app()
    app.config_from_object(django_settings(url), namespace="CELERY")
    assert app.conf.result_backend_always_retry and app.conf.result_retry() is not None
    assert set(app.conf.no_effect_set()) == {
        "result_extended", "task_send_sent_event", "worker_send_task_events"}
    assert app.conf.worker_hijack_root_logger is False  # honoured (test_signal_processes)
    expected = {"ssl_cert_reqs": "none"} if url.startswith("rediss") else {}
    for options in (app.conf.broker_options(), app.conf.result_options()):
        assert {k: v for k, v in options.items() if k.startswith("ssl")} == expected
