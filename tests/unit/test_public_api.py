"""The declared public surface: which modules are public, and exactly what each exports.

``tests/data/public_api.txt`` lists every public module and every name in its
``__all__``, once.  Adding, removing or renaming a public name fails here until
the listing says so, which makes every change to the surface a visible,
reviewed one (httpx keeps a test in the same spirit).

Every other module is private: its own name or a package above it starts
with an underscore, or it sits in an internal package (named below, with the
reason), or it is a storage backend that a scheme registry names (reached
by URL; its module path is what a registry entry or an entry point names).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import conveyor

LISTING = Path(__file__).parents[1] / "data" / "public_api.txt"

#: Packages whose modules are implementation, reached through the app, the CLI,
#: a URL or Django's machinery, never imported by users.
INTERNAL_PACKAGES = {
    "conveyor.worker": "run by `conveyor worker`",
    "conveyor.monitor": "served by `conveyor monitor`",
    "conveyor.migrate": "run by `conveyor migrate`",
    "conveyor.control": "reached through app.control",
    "conveyor.beat.": "beat's parts; the package itself re-exports its public names",
    "conveyor.contrib.django.management": "Django management commands",
    "conveyor.contrib.django.migrations": "Django migrations",
    "conveyor.contrib.django.templatetags": "template tag libraries, loaded by {% load %}",
}
#: Families whose backend modules the scheme registries name (conveyor/schemes.py).
BACKEND_PACKAGES = ("conveyor.brokers.", "conveyor.resultstores.", "conveyor.eventstores.")


def read_listing() -> dict[str, list[str]]:
    listing: dict[str, list[str]] = {}
    for line in LISTING.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            module, _, names = line.partition(":")
            listing[module.strip()] = names.split()
    return listing


def all_modules() -> list[str]:
    found = pkgutil.walk_packages(conveyor.__path__, "conveyor.")
    return ["conveyor", *sorted(info.name for info in found)]


def test_every_module_is_public_private_internal_or_a_registered_backend() -> None:
    public = read_listing()
    unclassified = [
        name for name in all_modules()
        if name not in public
        and not any(part.startswith("_") for part in name.split(".")[1:])
        and not any(name == p.rstrip(".") or name.startswith(p if p.endswith(".") else p + ".")
                    for p in INTERNAL_PACKAGES)
        and not name.startswith(BACKEND_PACKAGES)
    ]
    assert unclassified == [], (
        "new modules must be listed in tests/data/public_api.txt, start with an underscore, "
        f"or live in an internal package: {unclassified}")


def test_every_backend_module_is_named_by_a_registry() -> None:
    from conveyor.brokers import BROKERS
    from conveyor.eventstores import EVENT_STORES
    from conveyor.resultstores import RESULT_STORES

    named = {target.partition(":")[0] for family in (BROKERS, RESULT_STORES, EVENT_STORES)
             for target in family.builtin.values()}
    public = read_listing()
    helpers = {"conveyor.resultstores.record", "conveyor.resultstores.retrying"}
    backends = [name for name in all_modules() if name.startswith(BACKEND_PACKAGES)
                and name not in public and name not in helpers]
    assert sorted(set(backends) - named) == []


@pytest.mark.parametrize("module", sorted(read_listing()))
def test_public_names_are_exactly_the_listed_ones(module: str) -> None:
    if module.startswith("conveyor.contrib.django"):
        pytest.importorskip("django")
        from django.conf import settings

        if not settings.configured:
            pytest.skip("Django modules are checked by tests/django/test_public_api.py")
    loaded = importlib.import_module(module)
    exported = getattr(loaded, "__all__", None)
    assert exported is not None, f"{module} declares no __all__"
    assert sorted(exported) == sorted(read_listing()[module]), (
        f"{module}.__all__ changed: update tests/data/public_api.txt if that is intended")
    missing = [name for name in exported if not hasattr(loaded, name)]
    assert missing == []
