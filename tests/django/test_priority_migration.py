"""Migration 0003: periodic task priorities move to Celery's order (0 most urgent).

Run with Django's migration executor on the test database: rows written
under 0001 (9 most urgent) read the same urgency after 0003, and going back
restores the stored numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("conveyor", "0001_initial")]
AFTER = [("conveyor", "0003_celery_priority_order")]


@pytest.fixture
def executor(transactional_db: None) -> Iterator[MigrationExecutor]:
    runner = MigrationExecutor(connection)
    runner.migrate(BEFORE)
    yield runner
    call_command("migrate", "conveyor", verbosity=0)  # back to the latest for other tests


def _add_rows(model: Any, interval_model: Any, priorities: list[int | None]) -> None:
    every = interval_model.objects.create(every=10, period="seconds")
    for index, value in enumerate(priorities):
        model.objects.create(name=f"job-{index}", task="t.job", interval=every,
                             priority=value)


def _priorities(model: Any) -> list[int | None]:
    return list(model.objects.order_by("name").values_list("priority", flat=True))


def test_stored_priorities_keep_their_urgency(executor: MigrationExecutor) -> None:
    """Celery: kombu's Redis transport serves 0 first; django-celery-beat stores Celery's number."""
    old = executor.loader.project_state(BEFORE).apps
    _add_rows(old.get_model("conveyor", "PeriodicTask"),
              old.get_model("conveyor", "IntervalSchedule"), [9, 0, 5, None, 12])

    executor.loader.build_graph()
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    periodic = new.get_model("conveyor", "PeriodicTask")
    # 9 (most urgent before) is 0 now; 12, beyond the old form's range, counts as 9.
    assert _priorities(periodic) == [0, 9, 4, None, 0]

    executor.loader.build_graph()
    executor.migrate(BEFORE)
    back = executor.loader.project_state(BEFORE).apps
    assert _priorities(back.get_model("conveyor", "PeriodicTask")) == [9, 0, 5, None, 9]
