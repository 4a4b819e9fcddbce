"""conveyor monitor, with the project's app: manage.py conveyor_monitor --help."""

from __future__ import annotations

from conveyor.contrib.django.management import DelegatingCommand


class Command(DelegatingCommand):
    subcommand = ("monitor",)
    help = "conveyor monitor, with the project's app: manage.py conveyor_monitor --help."
