"""The scheme registry: shipped schemes, plug-ins through entry points, clear errors."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from conveyor import schemes
from conveyor.exceptions import ConfigurationError
from conveyor.schemes import Family, scheme_of

FAMILY = Family("widget store", "conveyor.test_widgets",
                {"json": "json:JSONDecoder", "nope": "conveyor_missing_mod:Thing"})


def test_scheme_of_reads_urls_and_bare_words() -> None:
    assert scheme_of("Redis://localhost/0") == "redis"
    assert scheme_of("django-db") == "django-db"


def test_shipped_scheme_loads_lazily() -> None:
    import json

    assert FAMILY.load("json", setting="x_url") is json.JSONDecoder


def test_unknown_scheme_names_setting_and_known_schemes() -> None:
    with pytest.raises(ConfigurationError) as caught:
        FAMILY.load("ftp", setting="widget_url", url_for_error="ftp://h")
    text = str(caught.value)
    assert "widget_url" in text and "'ftp'" in text and "json" in text


def test_missing_optional_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    family = Family("broker", "conveyor.test_widgets", {"amqp": "pika_absent_mod:X"})
    monkeypatch.setitem(schemes._EXTRAS, "pika_absent_mod", "rabbitmq")
    with pytest.raises(ConfigurationError, match=r"conveyor\[rabbitmq\]"):
        family.load("amqp", setting="broker_url")


def test_missing_non_optional_module_is_not_hidden() -> None:
    with pytest.raises(ModuleNotFoundError):
        FAMILY.load("nope", setting="x_url")


def test_plugins_extend_but_never_shadow(monkeypatch: pytest.MonkeyPatch) -> None:
    points = [EntryPoint("extra", "collections:OrderedDict", "conveyor.test_widgets"),
              EntryPoint("json", "collections:Counter", "conveyor.test_widgets")]
    monkeypatch.setattr(schemes, "entry_points", lambda group: points)
    schemes._plugins.cache_clear()
    try:
        import collections
        import json

        assert FAMILY.load("extra", setting="x") is collections.OrderedDict
        assert FAMILY.load("json", setting="x") is json.JSONDecoder
        assert FAMILY.schemes() == ["json", "nope", "extra"]
    finally:
        schemes._plugins.cache_clear()
