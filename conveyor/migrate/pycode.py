"""Python source: Celery imports and names become Conveyor's, comments untouched.

A concrete syntax tree (LibCST) is rewritten rather than text, so a module's
comments, blank lines and quoting survive, and only real imports and names
change (a ``celery`` inside a string or comment is left alone). What has no
counterpart is not guessed at: the import is still rewritten, so the project
stops depending on Celery, and the report names the line to fix.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from conveyor.migrate.report import Report

# Celery (and django-celery-beat/-results) modules and where their names live here.
MODULES = {
    "celery": "conveyor",
    "celery.app.task": "conveyor.task",
    "celery.canvas": "conveyor.canvas",
    "celery.exceptions": "conveyor.exceptions",
    "celery.result": "conveyor.result",
    "celery.schedules": "conveyor.schedules",
    "celery.signals": "conveyor.signals",
    "celery.states": "conveyor.states",
    "celery.utils.log": "conveyor.log",
    "celery.contrib.pytest": "conveyor.contrib.pytest",
    "celery.contrib.testing.app": "conveyor.testing",
    "celery.contrib.testing.worker": "conveyor.testing",
    "django_celery_beat.models": "conveyor.contrib.django.models",
    "django_celery_beat.schedulers": "conveyor.contrib.django.schedulers",
    "django_celery_results.models": "conveyor.contrib.django.models",
}
# Names that are spelled differently here: (Celery module, name) -> name.
RENAMED = {
    ("celery", "Celery"): "Conveyor",
    ("celery.contrib.testing.app", "TestApp"): "make_test_app",
}
# Django apps that Conveyor's one Django app replaces, in INSTALLED_APPS.
REPLACED_APPS = ("django_celery_beat", "django_celery_results")
DJANGO_APP = "conveyor.contrib.django"
STRINGS = {
    "django_celery_beat.schedulers:DatabaseScheduler":
        "conveyor.contrib.django.schedulers:DatabaseScheduler",
    "django_celery_beat.schedulers.DatabaseScheduler":
        "conveyor.contrib.django.schedulers:DatabaseScheduler",
}


def is_celery_module(name: str) -> bool:
    return name.split(".")[0] in ("celery", "django_celery_beat", "django_celery_results")


def exists(module: str, name: str) -> bool:
    """Whether ``from module import name`` works in this Conveyor."""
    try:
        found = importlib.import_module(module)
    except ImportError:
        return False
    if hasattr(found, name):
        return True
    try:
        return importlib.util.find_spec(f"{module}.{name}") is not None
    except ImportError:
        return False


def _dotted(node: cst.BaseExpression | None) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    return ""


def _expression(dotted: str) -> cst.Attribute | cst.Name:
    return cst.parse_expression(dotted)  # type: ignore[return-value]


def _quoted(like: cst.SimpleString, value: str) -> cst.SimpleString:
    """``value`` as a string literal with ``like``'s quotes (values here need no escapes)."""
    return cst.SimpleString(f"{like.prefix}{like.quote}{value}{like.quote}")


def _string_value(node: cst.BaseElement) -> str | None:
    value = node.value
    if isinstance(value, cst.SimpleString):
        evaluated = value.evaluated_value
        return evaluated if isinstance(evaluated, str) else None
    return None


class _Rewriter(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, report: Report, path: Path) -> None:
        super().__init__()
        self.report, self.path = report, path
        self.names: dict[str, str] = {}     # a local name to rename in the module body
        self.modules: dict[str, str] = {}   # ``import celery`` -> attribute access rewritten

    def _note(self, node: cst.CSTNode, message: str) -> None:
        line = self.get_metadata(PositionProvider, node).start.line
        self.report.note(self.path, line, message)

    # -- imports ---------------------------------------------------------------
    def leave_ImportFrom(self, original: cst.ImportFrom,
                         updated: cst.ImportFrom) -> cst.ImportFrom:
        if updated.relative:
            return updated
        module = _dotted(updated.module)
        if not is_celery_module(module):
            return updated
        target = MODULES.get(module)
        if target is None:
            self._note(original, f"no Conveyor counterpart for module {module}; "
                                 "see docs/migrating-from-celery.md")
            return updated
        if isinstance(updated.names, cst.ImportStar):
            self._note(original, f"'from {module} import *' rewritten to {target}: "
                                 "check the names it provided")
            return updated.with_changes(module=_expression(target))
        return updated.with_changes(module=_expression(target),
                                    names=[self._alias(original, module, target, a)
                                           for a in updated.names])

    def _alias(self, node: cst.CSTNode, module: str, target: str,
               alias: cst.ImportAlias) -> cst.ImportAlias:
        name = _dotted(alias.name)
        new = RENAMED.get((module, name), name)
        if not exists(target, new):
            self._note(node, f"{module}.{name} has no counterpart in {target}; "
                             "see docs/migrating-from-celery.md")
        if new == name:
            return alias
        if alias.asname is None:
            self.names[name] = new
        return alias.with_changes(name=cst.Name(new))

    def leave_Import(self, original: cst.Import, updated: cst.Import) -> cst.Import:
        aliases = []
        for alias in updated.names:
            name = _dotted(alias.name)
            target = MODULES.get(name)
            if target is None:
                if is_celery_module(name):
                    self._note(original, f"no Conveyor counterpart for module {name}")
                aliases.append(alias)
                continue
            if alias.asname is None:
                self.modules[name.split(".")[0]] = target.split(".")[0]
            aliases.append(alias.with_changes(name=_expression(target)))
        return updated.with_changes(names=aliases)

    # -- names -----------------------------------------------------------------
    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        new = self.names.get(updated.value)
        return updated.with_changes(value=new) if new else updated

    def leave_Attribute(self, original: cst.Attribute,
                        updated: cst.Attribute) -> cst.BaseExpression:
        # An attribute's own name is not a variable: undo leave_Name's rename...
        updated = updated.with_changes(attr=original.attr)
        # ...unless it is read from a renamed module (``celery.Celery``).
        base = _dotted(original.value)
        if isinstance(original.value, cst.Name) and base in self.modules:
            name = original.attr.value
            new = RENAMED.get((base, name), name)
            return updated.with_changes(value=cst.Name(self.modules[base]),
                                        attr=cst.Name(new))
        return updated

    # -- strings: INSTALLED_APPS and scheduler paths ---------------------------------
    def leave_SimpleString(self, original: cst.SimpleString,
                           updated: cst.SimpleString) -> cst.SimpleString:
        value = original.evaluated_value
        if isinstance(value, str) and value in STRINGS:
            return _quoted(updated, STRINGS[value])
        return updated

    def leave_List(self, original: cst.List, updated: cst.List) -> cst.List:
        return updated.with_changes(elements=self._apps(updated.elements))

    def leave_Tuple(self, original: cst.Tuple, updated: cst.Tuple) -> cst.Tuple:
        return updated.with_changes(elements=self._apps(updated.elements))

    def _apps(self, elements: Any) -> list[cst.BaseElement]:
        """Replace django-celery-beat/-results with Conveyor's app, once."""
        values = [_string_value(e) for e in elements]
        if not any(v in REPLACED_APPS for v in values):
            return list(elements)
        have = DJANGO_APP in values
        kept: list[cst.BaseElement] = []
        for element, value in zip(elements, values, strict=True):
            if value not in REPLACED_APPS:
                kept.append(element)
            elif not have:
                assert isinstance(element.value, cst.SimpleString)
                kept.append(element.with_changes(value=_quoted(element.value, DJANGO_APP)))
                have = True
        return kept

    # -- settings ----------------------------------------------------------------
    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            name = target.target
            if isinstance(name, cst.Name) and name.value.startswith("CELERY_"):
                self._check_setting(node, name.value)

    def _check_setting(self, node: cst.CSTNode, name: str) -> None:
        from conveyor._config import Settings
        from conveyor._no_effect import NO_EFFECT

        key = name[len("CELERY_"):].lower()
        if key in NO_EFFECT:
            self._note(node, f"{name} has no effect in Conveyor: {NO_EFFECT[key].reason}")
        elif key not in Settings.known():
            self._note(node, f"{name} is not a Conveyor setting: the app would refuse it "
                             "(see docs/settings.md)")


def rewrite_python(path: Path, source: str, report: Report) -> str:
    """``source`` with Celery's imports and names replaced; findings go to ``report``."""
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        report.note(path, exc.raw_line, f"not rewritten: cannot parse ({exc.message})")
        return source
    wrapper = MetadataWrapper(module)
    return wrapper.visit(_Rewriter(report, path)).code
