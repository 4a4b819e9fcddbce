"""Crontab fields: cron syntax (``"*/15"``, ``"mon-fri"``, ``"1-10/2"``) to sets of values.

Also Celery's stand-alone ``crontab_parser``, which reads the same syntax.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from conveyor.beat.schedules.base import ScheduleError

__all__ = ["FIELD_NAMES", "SPECS", "CronField", "FieldSpec", "crontab_parser", "parse_field"]

#: What a crontab field accepts: an expression such as ``"*/15"``, one int, or ints.
CronField: TypeAlias = str | int | Iterable[int]
#: The crontab's fields, in the order its arguments take them.
FIELD_NAMES = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


@dataclass(frozen=True)
class FieldSpec:
    """How one crontab field is spelled and which values it allows."""

    name: str
    low: int
    high: int  # what "*" covers
    accepted_high: int  # may exceed ``high``: day_of_week takes 7 for Sunday
    names: Mapping[str, int]
    name_hint: str = ""

    def error(self, detail: str) -> ScheduleError:
        return ScheduleError(f"crontab field {self.name!r}: {detail}")

    def canonical(self, value: int) -> int:
        # Sunday is both 0 and 7 in cron; store 0 so the two compare equal.
        return 0 if value > self.high else value

    def check(self, value: int, source: str) -> int:
        if not self.low <= value <= self.accepted_high:
            raise self.error(
                f"{value} is out of range {self.low}-{self.accepted_high}{_within(value, source)}"
            )
        return value

    def value(self, token: str, source: str) -> int:
        """One number or name from an expression, checked against the range."""
        token = token.strip()
        if token.isascii() and token.isdigit():
            return self.check(int(token), source)
        if token.lower() in self.names:
            return self.names[token.lower()]
        raise self.error(f"{token!r} is not a number{self.name_hint}{_within(token, source)}")


def _within(bad: object, source: str) -> str:
    """`` in '1,25'`` when the bad piece is only part of what the user wrote."""
    return "" if str(bad) == source else f" in {source!r}"


def _names(short: tuple[str, ...], long: tuple[str, ...], first: int) -> dict[str, int]:
    table = {name: i for i, name in enumerate(short, start=first)}
    table.update({name: i for i, name in enumerate(long, start=first)})
    return table


DAY_NAMES = _names(
    ("sun", "mon", "tue", "wed", "thu", "fri", "sat"),
    ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"),
    first=0,
)
MONTH_NAMES = _names(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ("january", "february", "march", "april", "may", "june", "july", "august",
     "september", "october", "november", "december"),
    first=1,
)  # fmt: skip

SPECS = {
    "minute": FieldSpec("minute", 0, 59, 59, {}),
    "hour": FieldSpec("hour", 0, 23, 23, {}),
    "day_of_week": FieldSpec("day_of_week", 0, 6, 7, DAY_NAMES, " or a day name (sun..sat)"),
    "day_of_month": FieldSpec("day_of_month", 1, 31, 31, {}),
    "month_of_year": FieldSpec(
        "month_of_year", 1, 12, 12, MONTH_NAMES, " or a month name (jan..dec)"
    ),
}


def parse_field(spec: FieldSpec, value: object) -> tuple[str, frozenset[int]]:
    """``(source text, allowed values)`` for one field; the text is kept for repr and storage."""
    if isinstance(value, bool):
        raise spec.error(f"{value!r} is not a cron expression")
    if isinstance(value, int):
        return str(value), frozenset({spec.canonical(spec.check(value, str(value)))})
    if isinstance(value, str):
        text = value.strip()
        return text, parse_text(spec, text)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        return _parse_iterable(spec, value)
    raise spec.error(
        f"{value!r} is not a cron expression (expected a string, an int or a set of ints)"
    )


def _parse_iterable(spec: FieldSpec, items: Iterable[object]) -> tuple[str, frozenset[int]]:
    numbers: set[int] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise spec.error(f"{item!r} is not an int")
        numbers.add(spec.check(item, str(item)))
    if not numbers:
        raise spec.error("an empty set of values would never match")
    ordered = sorted(numbers)
    return ",".join(map(str, ordered)), frozenset(spec.canonical(v) for v in ordered)


def parse_text(spec: FieldSpec, text: str) -> frozenset[int]:
    if not text:
        raise spec.error("empty expression")
    values: set[int] = set()
    for part in text.split(","):
        values.update(_parse_part(spec, part.strip(), text))
    return frozenset(values)


def _parse_part(spec: FieldSpec, part: str, text: str) -> list[int]:
    """One comma-separated piece: ``*``, ``5``, ``1-5``, ``mon-fri``, ``*/15``, ``1-9/2``, ``5/6``.

    A reversed range wraps around; a stepped single value runs to the top of the field.
    """
    base, slash, step_text = part.partition("/")
    step = _parse_step(spec, step_text, text) if slash else 1
    if base.strip() == "*":
        first, last = spec.low, spec.high
    elif "-" in base:
        left, _, right = base.partition("-")
        first, last = spec.value(left, text), spec.value(right, text)
    else:
        first = spec.value(base, text)
        # "5/15" is cron shorthand for "5-59/15": from the value to the top.
        last = spec.high if slash else first
    return [spec.canonical(v) for v in _span(spec, first, last)[::step]]


def _parse_step(spec: FieldSpec, step_text: str, text: str) -> int:
    step_text = step_text.strip()
    if not (step_text.isascii() and step_text.isdigit()):
        raise spec.error(f"{step_text!r} is not a valid step in {text!r}")
    if int(step_text) < 1:
        raise spec.error(f"step must be at least 1, got {step_text} in {text!r}")
    return int(step_text)


def _span(spec: FieldSpec, first: int, last: int) -> list[int]:
    """Values from first to last; a reversed range wraps around (``fri-mon``), as in Celery."""
    if first <= last:
        return list(range(first, last + 1))
    if first > spec.high:  # "7-2": Sunday written as 7 starts the week
        return list(range(spec.low, last + 1))
    return list(range(first, spec.high + 1)) + list(range(spec.low, last + 1))


class crontab_parser:  # lower case: Celery's spelling
    """Celery's stand-alone field parser: ``crontab_parser(60).parse("*/15") == {0, 15, 30, 45}``.

    Values run from ``min_`` to ``min_ + max_ - 1`` (``crontab_parser(31, 1)``
    for days of the month); day and month names are read in any field, as in
    Celery.  The syntax is the crontab fields' own; a bad expression raises
    ``ScheduleError``, also reachable as ``crontab_parser.ParseException``.
    """

    ParseException = ScheduleError

    def __init__(self, max_: int = 60, min_: int = 0) -> None:
        if isinstance(max_, bool) or not isinstance(max_, int) or max_ < 1:
            raise ScheduleError(f"crontab_parser max_ must be a positive int, got {max_!r}")
        top = min_ + max_ - 1
        self._spec = FieldSpec("expression", min_, top, top, {**DAY_NAMES, **MONTH_NAMES})

    def parse(self, spec: str) -> set[int]:
        """The values ``spec`` names, e.g. ``"1-5,*/20"``."""
        if not isinstance(spec, str):
            raise self._spec.error(f"{spec!r} is not a cron expression")
        return set(parse_text(self._spec, spec.strip()))


def next_in(values: tuple[int, ...], at_least: int) -> int | None:
    """The smallest allowed value >= ``at_least``, or None when the field must roll over."""
    index = bisect.bisect_left(values, at_least)
    return values[index] if index < len(values) else None
