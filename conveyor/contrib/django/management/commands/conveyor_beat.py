"""conveyor beat, with the project's app: manage.py conveyor_beat --help."""

from __future__ import annotations

from conveyor.contrib.django.management import DelegatingCommand


class Command(DelegatingCommand):
    subcommand = ("beat",)
    help = "conveyor beat, with the project's app: manage.py conveyor_beat --help."
