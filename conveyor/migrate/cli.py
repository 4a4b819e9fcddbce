"""The ``conveyor migrate`` command: a diff or the rewrite, then the report."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from conveyor.migrate import Report


@click.command("migrate")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--check", is_flag=True,
              help="print the changes as a diff and write nothing (exit 1 if any)")
def migrate_command(path: Path, check: bool) -> None:
    """Rewrite a Celery project at PATH to use Conveyor, in place.

    Imports and names in Python modules (comments and formatting kept),
    INSTALLED_APPS, command lines in Supervisor, systemd, Procfile, Docker
    and compose files, and requirements. Ends with everything it could not
    map, with file and line.
    """
    from conveyor.migrate import migrate_project  # LibCST loads only for this command

    report = migrate_project(path, check=check)
    if check:
        _print_diff(report)
    for changed in sorted(report.changed):
        click.echo(f"{'would rewrite' if check else 'rewrote'} {report.relative(changed)}")
    if report.findings:
        click.echo(f"\n{len(report.findings)} thing(s) to look at:")
        for finding in report.findings:
            click.echo(f"  {finding}")
    else:
        click.echo("nothing left to map by hand")
    if check and report.changed:
        raise SystemExit(1)


def _print_diff(report: Report) -> None:
    for path, (old, new) in sorted(report.changed.items()):
        name = report.relative(path)
        click.echo("".join(difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True),
            fromfile=f"a/{name}", tofile=f"b/{name}")), nl=False)
