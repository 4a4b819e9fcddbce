"""manage.py conveyor_copy_celery_data: django-celery-beat and -results rows into Conveyor's."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = ("Copy django-celery-beat's periodic tasks and schedules and django-celery-results' "
            "task and group results into Conveyor's tables (ids kept; safe to run again).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default",
                            help="the database alias holding both sets of tables")
        parser.add_argument("--no-beat", action="store_true",
                            help="leave periodic tasks and schedules alone")
        parser.add_argument("--no-results", action="store_true",
                            help="leave task and group results alone")

    def handle(self, *args: Any, **options: Any) -> None:
        from conveyor._state import current_app
        from conveyor.contrib.django._celery_copy import copy_all

        report = copy_all(options["database"], beat=not options["no_beat"],
                          results=not options["no_results"],
                          result_ttl=current_app().conf.result_expires)
        for line in report.lines():
            self.stdout.write(line)
