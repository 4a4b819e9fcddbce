"""Layering: the core never imports ``conveyor.contrib``; contrib plugs in by entry points.

Issue 17: ``results/__init__.py`` used to import ``contrib.django`` to open
``django-db``, so the core depended on an integration.  Now ``django-db``
(and its ``django`` alias) is registered in ``pyproject.toml`` under the
``conveyor.result_stores`` group, as a third-party store would be.
"""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import conveyor
from conveyor.resultstores import RESULT_STORES

PACKAGE = Path(conveyor.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "conveyor":
                found.update(f"conveyor.{alias.name}" for alias in node.names)
    return found


def test_no_core_module_imports_contrib() -> None:
    core = [p for p in PACKAGE.rglob("*.py") if "contrib" not in p.relative_to(PACKAGE).parts]
    assert len(core) > 50  # the walk found the package
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imported_modules(p)
                                             if m == "conveyor.contrib"
                                             or m.startswith("conveyor.contrib."))
        for p in core
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_the_walk_would_see_a_contrib_import(tmp_path: Path) -> None:
    """The check above can fail: both import forms are noticed."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from conveyor.contrib.django import results\n"
                     "    import conveyor.contrib.pytest\n")
    assert _imported_modules(probe) == {"conveyor.contrib.django", "conveyor.contrib.pytest"}


def test_django_db_is_not_a_builtin_scheme_but_an_entry_point() -> None:
    assert "django-db" not in RESULT_STORES.builtin
    points = {p.name: p.value for p in entry_points(group="conveyor.result_stores")}
    assert points["django-db"] == "conveyor.contrib.django.results:open_result_store"
    assert points["django"] == points["django-db"]
    assert RESULT_STORES.knows("django-db") and RESULT_STORES.knows("django")
    # Opening it (Django configured): tests/django/test_results.py
    # test_django_db_url_opens_the_django_store.


def test_the_django_deferrer_installer_is_an_entry_point() -> None:
    points = {p.name: p.value for p in entry_points(group="conveyor.django_deferrers")}
    assert points == {"django": "conveyor.contrib.django._transaction:install"}
