"""Requirements: Celery and its companions become one ``conveyor[...]`` line.

``celery[redis]``, ``django-celery-beat``, ``django-celery-results`` and
``flower`` are what Conveyor replaces; they become a single requirement with
the extras that cover them (``redis``, ``django``, ``monitor``). Version pins
are not carried over (Conveyor's versions are its own), and the report says
so, since Conveyor is installed from a wheel until it is published.
"""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.migrate.report import Report

_REQUIREMENT = re.compile(
    r"^(?P<indent>\s*)(?P<name>celery|django-celery-beat|django_celery_beat|"
    r"django-celery-results|django_celery_results|flower)(?P<extras>\[[^\]]*\])?"
    r"(?P<rest>[^#\n]*)(?P<comment>#.*)?$", re.IGNORECASE)
_QUOTED = re.compile(r"([\"'])(?P<name>celery|django-celery-beat|django-celery-results|flower)"
                     r"(?P<extras>\[[^\]]*\])?[^\"']*\1", re.IGNORECASE)
_CELERY_EXTRAS = {"redis": "redis", "django": "django", "librabbitmq": "rabbitmq"}


def _extras_for(name: str, extras: str | None, report: Report, path: Path, line: int) -> set[str]:
    key = name.lower().replace("_", "-")
    if key == "flower":
        return {"monitor"}
    if key.startswith("django-celery"):
        return {"django"}
    wanted = {e.strip().lower() for e in (extras or "[]")[1:-1].split(",") if e.strip()}
    for extra in sorted(wanted - set(_CELERY_EXTRAS)):
        report.note(path, line, f"celery[{extra}] has no Conveyor extra: its broker or "
                                "backend is not supported (see docs/operations.md)")
    return {_CELERY_EXTRAS[e] for e in wanted if e in _CELERY_EXTRAS}


def _requirement(extras: set[str]) -> str:
    return "conveyor" + (f"[{','.join(sorted(extras))}]" if extras else "")


def rewrite_requirements(path: Path, text: str, report: Report) -> str:
    """A requirements file with one ``conveyor[...]`` line in place of the Celery ones."""
    lines = text.splitlines(keepends=True)
    extras: set[str] = set()
    first: int | None = None
    for number, line in enumerate(lines, start=1):
        found = _REQUIREMENT.match(line.rstrip("\n"))
        if found is None:
            continue
        extras |= _extras_for(found["name"], found["extras"], report, path, number)
        if first is None:
            first = number - 1
        lines[number - 1] = ""
    if first is None:
        return text
    lines[first] = _requirement(extras) + "\n"
    report.note(path, first + 1, "Conveyor is not on PyPI yet: install it from a wheel "
                                 "(make dist; see README.md), and pin its version there")
    return "".join(lines)


def rewrite_quoted_requirements(path: Path, text: str, report: Report) -> str:
    """Requirements inside quotes (``pyproject.toml`` dependencies)."""
    out = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        def swap(m: re.Match[str], number: int = number) -> str:
            extras = _extras_for(m["name"], m["extras"], report, path, number)
            return f"{m[1]}{_requirement(extras)}{m[1]}"
        out.append(_QUOTED.sub(swap, line))
    return "".join(out)
