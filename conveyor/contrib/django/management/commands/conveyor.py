"""Any conveyor command: manage.py conveyor queues, ... worker -Q x."""

from __future__ import annotations

from conveyor.contrib.django.management import DelegatingCommand


class Command(DelegatingCommand):
    subcommand = ()
    help = "Any conveyor command: manage.py conveyor queues, ... worker -Q x."
