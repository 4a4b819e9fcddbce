"""``conveyor migrate PATH``: move a Celery project over, in place.

Python modules are rewritten on their syntax tree (:mod:`.pycode`), command
lines in deployment files as lines (:mod:`.commands`), requirements as one
``conveyor[...]`` line (:mod:`.requirements`). Nothing is written with
``check=True``; either way the :class:`~conveyor.migrate.report.Report` holds
every change and everything that could not be mapped, with file and line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from conveyor.migrate.commands import rewrite_commands
from conveyor.migrate.report import Finding, Report
from conveyor.migrate.requirements import rewrite_quoted_requirements, rewrite_requirements

__all__ = ["Finding", "Report", "migrate_project"]

Rewrite = Callable[[Path, str, Report], str]

_SKIPPED_DIRS = {".git", ".hg", ".venv", "venv", "env", ".env", "node_modules", "__pycache__",
                 ".tox", ".nox", "build", "dist", "site-packages", ".mypy_cache", ".ruff_cache"}
_COMMAND_SUFFIXES = {".yml", ".yaml", ".conf", ".ini", ".service", ".sh", ".cfg", ".env"}
_COMMAND_NAMES = {"Procfile", "Makefile", "Dockerfile", "Containerfile"}


def rewriter_for(path: Path) -> Rewrite | None:
    """Which rewrite a file gets, by its name; None leaves it alone."""
    name = path.name
    if path.suffix == ".py":
        from conveyor.migrate.pycode import rewrite_python  # LibCST: loaded only to migrate

        return rewrite_python
    if name == "pyproject.toml":
        return rewrite_quoted_requirements
    if path.suffix in (".txt", ".in") and "requirements" in (name[:12], path.parent.name):
        return rewrite_requirements
    if (path.suffix in _COMMAND_SUFFIXES or name in _COMMAND_NAMES
            or name.startswith(("Dockerfile", "Procfile"))):
        return rewrite_commands
    return None


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.iterdir()):
        if path.is_dir():
            if path.name not in _SKIPPED_DIRS and not path.is_symlink():
                yield from _files(path)
        elif path.is_file():
            yield path


def migrate_project(root: Path, check: bool = False) -> Report:
    """Rewrite every file under ``root`` that mentions Celery (unless ``check``)."""
    root = root.resolve()
    report = Report(root if root.is_dir() else root.parent)
    for path in _files(root):
        rewrite = rewriter_for(path)
        if rewrite is None:
            continue
        try:
            old = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            report.note(path, 0, f"not read: {exc}")
            continue
        if "celery" not in old.lower() and "flower" not in old.lower():
            continue
        new = rewrite(path, old, report)
        if new != old:
            report.changed[path] = (old, new)
            if not check:
                path.write_text(new, encoding="utf-8")
    report.findings.sort()
    return report
