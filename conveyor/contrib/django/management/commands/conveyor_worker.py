"""conveyor worker, with the project's app: manage.py conveyor_worker --help."""

from __future__ import annotations

from conveyor.contrib.django.management import DelegatingCommand


class Command(DelegatingCommand):
    subcommand = ("worker",)
    help = "conveyor worker, with the project's app: manage.py conveyor_worker --help."
