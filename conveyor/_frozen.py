"""A quicker ``__init__`` for the frozen, slotted dataclasses on the hot paths.

``@dataclass(frozen=True)`` writes each field in ``__init__`` through
``object.__setattr__(self, name, value)`` (its ``__setattr__`` refuses
assignment), which looks the name up in the class on every call.  A slotted
class keeps each field in a member descriptor; calling that descriptor's
``__set__`` writes the slot directly.  For :class:`~conveyor._message.Message`
and :class:`~conveyor.resultstores.record.ResultRecord` (21 fields each,
one made per message the worker decodes and per result a client reads) that
is ~1.2 µs instead of ~2.3 µs per instance (docs/performance.md, round two,
fifth pass).

:func:`quick_init` replaces the generated ``__init__`` with one of the same
parameters, defaults and default factories; the instance is the same (equal,
frozen, same repr and pickle).  A class this does not cover (no slots, a
``__post_init__``, init-only or keyword-only fields, fields left out of
``__init__``) keeps the ``__init__`` dataclasses wrote.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

C = TypeVar("C", bound=type)
T = TypeVar("T")

class _Factory:
    """The default of a parameter whose field has a default factory."""

    def __repr__(self) -> str:
        return "<factory>"  # as dataclasses shows it in the signature


_FACTORY = _Factory()


def _covered(cls: Any) -> bool:
    fields = dataclasses.fields(cls)
    return (hasattr(cls, "__slots__") and not hasattr(cls, "__post_init__")
            and all(f.init and f.kw_only is not True for f in fields)
            and len(fields) == len(cls.__dataclass_fields__))  # no InitVar or ClassVar


def quick_init(cls: C) -> C:
    """Give the frozen, slotted dataclass ``cls`` an ``__init__`` that sets slots directly."""
    if not _covered(cls):
        return cls
    fields = dataclasses.fields(cls)
    names: dict[str, Any] = {"_FACTORY": _FACTORY}
    params: list[str] = []
    body: list[str] = []
    for f in fields:
        names[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        value = f.name
        if f.default is not dataclasses.MISSING:
            names[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            names[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_FACTORY")
            value = f"_factory_{f.name}() if {f.name} is _FACTORY else {f.name}"
        else:
            params.append(f.name)
        body.append(f"    _set_{f.name}(self, {value})")
    source = (f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
              + "\n")
    exec(source, names)  # as dataclasses itself writes __init__
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    generated = vars(cls)["__init__"]
    init.__annotations__ = dict(generated.__annotations__)
    init.__doc__ = generated.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 -- mypy refuses the assignment
    return cls


def from_mapping(cls: type[T]) -> Callable[[Mapping[str, Any]], T]:
    """A function making ``cls(**{k: v for k, v in fields.items() if k in cls's fields})``.

    Keys that are not fields are ignored, a missing field takes its default,
    and a missing field without one raises ``TypeError`` as ``cls(**...)``
    does; no keyword arguments are parsed.  For reading stored documents
    (a result record is 21 fields): about half the time of ``cls(**doc)``.
    ``cls`` must be one :func:`quick_init` covers.
    """
    if not _covered(cls):
        raise TypeError(f"{cls.__qualname__} is not a frozen, slotted dataclass quick_init covers")
    names: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_FACTORY": _FACTORY}
    body = ["    self = _new(_cls)", "    get = fields.get"]
    klass: Any = cls
    for f in dataclasses.fields(klass):
        names[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            names[f"_default_{f.name}"] = f.default
            body.append(f"    _set_{f.name}(self, get({f.name!r}, _default_{f.name}))")
            continue
        body.append(f"    value = get({f.name!r}, _FACTORY)")
        if f.default_factory is not dataclasses.MISSING:
            names[f"_factory_{f.name}"] = f.default_factory
            body.append(f"    _set_{f.name}(self, _factory_{f.name}() if value is _FACTORY "
                        "else value)")
        else:
            body += ["    if value is _FACTORY:",
                     f"        raise TypeError('{cls.__qualname__} needs the field {f.name}')",
                     f"    _set_{f.name}(self, value)"]
    source = "def make(fields):\n" + "\n".join([*body, "    return self"]) + "\n"
    exec(source, names)
    make: Callable[[Mapping[str, Any]], T] = names["make"]
    make.__qualname__ = f"from_mapping({cls.__qualname__})"
    return make


__all__ = ["from_mapping", "quick_init"]
