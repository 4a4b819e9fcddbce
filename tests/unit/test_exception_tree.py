"""The exception tree drawn in conveyor/exceptions.py is the tree that exists.

Every error Conveyor raises derives from ``ConveyorError`` (STYLE.md rule 5),
and the module's docstring draws the whole tree for readers. This test
imports every module of the package, collects every ``ConveyorError``
subclass, and compares names and parents with the drawing, so a class added
anywhere without being drawn (or drawn under the wrong parent) fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

import conveyor
from conveyor import exceptions
from conveyor.exceptions import ConveyorError

# Modules that need a configured Django (app registry) or are a pytest plugin.
_SKIPPED = ("conveyor.contrib.django", "conveyor.contrib.pytest", "conveyor.__main__")


def _import_everything() -> None:
    for info in pkgutil.walk_packages(conveyor.__path__, "conveyor."):
        if not info.name.startswith(_SKIPPED):
            importlib.import_module(info.name)


def _existing() -> dict[str, str]:
    """Class name -> the name of its ConveyorError parent."""
    found: dict[str, str] = {}
    pending = [ConveyorError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("conveyor") and not sub.__name__.startswith("_"):
                found[sub.__name__] = next(b.__name__ for b in sub.__mro__[1:]
                                           if issubclass(b, ConveyorError))
                pending.append(sub)
    return found


def _drawn() -> dict[str, str]:
    """Class name -> parent, read from the box drawing in the docstring."""
    doc = exceptions.__doc__ or ""
    tree = doc.split("The tree::", 1)[1]
    parents: list[str] = []
    drawn: dict[str, str] = {}
    for line in tree.splitlines():
        found = re.match(r"^    ((?:[│ ]   )*)(?:[├└]── )?(\w+)", line)
        if found is None:
            if drawn:
                break
            continue
        depth = len(found[1]) // 4 + (1 if "──" in line else 0)
        del parents[depth:]
        if parents:
            drawn[found[2]] = parents[-1]
        parents.append(found[2])
    return drawn


def test_the_drawn_tree_is_the_tree_that_exists() -> None:
    _import_everything()
    assert _drawn() == _existing()
