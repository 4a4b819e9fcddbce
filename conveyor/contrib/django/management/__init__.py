"""``manage.py conveyor ...``: the ``conveyor`` command line, run through Django.

Each command hands its arguments to the click CLI with ``-A`` filled in from
the app this Django process has already imported (``proj/__init__.py``
imports it), so ``manage.py conveyor_worker -Q orders`` is
``conveyor -A proj worker -Q orders``.  ``-A`` may still be given first.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from conveyor.app import Conveyor


def find_app_spec() -> str:
    """Where the project's Conveyor app is, for ``-A``.

    The app this process imported (``proj/__init__.py`` imports it when the
    settings load), else the package holding the settings module, where
    ``conveyor -A`` looks for ``conveyor.py`` or ``celery.py``.
    """
    from django.conf import settings

    from conveyor._state import current_app

    candidates = []
    for module_name, module in list(sys.modules.items()):
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            if isinstance(value, Conveyor) and not attr.startswith("_"):
                candidates.append((module_name, attr, value))
    if candidates:
        current = current_app()
        chosen = next((c for c in candidates if c[2] is current), candidates[0])
        return f"{chosen[0]}:{chosen[1]}"
    package = (getattr(settings, "SETTINGS_MODULE", None) or "").rpartition(".")[0]
    if package:
        return package
    raise CommandError("no Conveyor app found; pass it: manage.py conveyor -A proj ... "
                       "(or set CONVEYOR_APP)")


def _with_app(args: list[str]) -> list[str]:
    """Put ``-A <app>`` first unless the user gave it (or ``CONVEYOR_APP``)."""
    if (args and args[0].startswith(("-A", "--app"))) or os.environ.get("CONVEYOR_APP"):
        return args
    return ["-A", find_app_spec(), *args]


class DelegatingCommand(BaseCommand):
    """A management command that runs ``conveyor [-A app] <subcommand> ...``."""

    subcommand: tuple[str, ...] = ()
    help = "Run the conveyor command line (see `conveyor --help`)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER)

    def run_from_argv(self, argv: list[str]) -> None:
        """``manage.py <name> ...``: click parses everything, including --help."""
        from conveyor._cli import main

        prog = f"{os.path.basename(argv[0])} {argv[1]}"
        args = _with_app(argv[2:])
        try:
            main.main(args=self._arguments(args), prog_name=prog, standalone_mode=True)
        except Exception as exc:
            _reraise(exc)

    def handle(self, *args: Any, **options: Any) -> None:
        """``call_command(name, ...)``: errors become CommandError."""
        import click

        from conveyor._cli import main

        try:
            main.main(args=self._arguments(_with_app(list(args))), prog_name=f"manage.py "
                      f"{self.__module__.rsplit('.', 1)[-1]}", standalone_mode=False)
        except click.exceptions.Exit as exc:
            if exc.exit_code:
                raise CommandError(f"exited with {exc.exit_code}") from exc
        except (click.ClickException, click.Abort) as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            _reraise(exc)

    def _arguments(self, args: list[str]) -> list[str]:
        # -A and its value stay in front of the subcommand.
        if not args or not args[0].startswith(("-A", "--app")):
            cut = 0
        elif args[0] in ("-A", "--app"):
            cut = 2
        else:
            cut = 1
        return [*args[:cut], *self.subcommand, *args[cut:]]


def _reraise(exc: Exception) -> None:
    from conveyor.exceptions import ConfigurationError

    if isinstance(exc, ConfigurationError):
        raise CommandError(f"configuration error: {exc}") from exc
    raise exc
