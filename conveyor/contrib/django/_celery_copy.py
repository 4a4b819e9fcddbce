"""Copy django-celery-beat and django-celery-results rows into Conveyor's tables.

A project that switches over keeps its periodic tasks (with their ids,
schedules, last-run times and run counts) and its stored results.  The
source tables are read with plain SQL, so the two Celery apps need not be in
``INSTALLED_APPS`` any more: only their tables must still exist.  Columns
are matched by name, so every django-celery-beat 2.x schema is read (older
ones lack ``headers``, ``expire_seconds`` or ``clocked``).

Running it again changes nothing new: schedules and periodic tasks are
written by id (a periodic task whose name is already taken by another row
updates that row, and the report says so), results by task id.  Sequences
are reset afterwards (PostgreSQL), so rows added later get fresh ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.management.color import no_style
from django.db import connections, models, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from conveyor import states
from conveyor.contrib.django import models as ours
from conveyor.resultstores.record import ResultRecord

BEAT_PREFIX = "django_celery_beat_"
RESULTS_PREFIX = "django_celery_results_"
_SCHEDULES: list[tuple[str, type[models.Model]]] = [
    ("intervalschedule", ours.IntervalSchedule),
    ("crontabschedule", ours.CrontabSchedule),
    ("solarschedule", ours.SolarSchedule),
    ("clockedschedule", ours.ClockedSchedule),
]
_BATCH = 500


@dataclass
class Report:
    """What a copy did, table by table, and what it could not copy."""

    copied: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, table: str, count: int = 1) -> None:
        self.copied[table] = self.copied.get(table, 0) + count

    def lines(self) -> list[str]:
        out = [f"{table}: {count} row(s)" for table, count in self.copied.items()]
        return out + [f"note: {note}" for note in self.notes] if out or self.notes else [
            "nothing to copy: no django-celery-beat or django-celery-results tables found"]


def copy_all(using: str = "default", beat: bool = True, results: bool = True,
             result_ttl: float = 86400.0) -> Report:
    """Copy what exists; each family in one transaction, so a failure copies nothing of it."""
    report = Report()
    tables = set(connections[using].introspection.table_names())
    if beat and f"{BEAT_PREFIX}periodictask" in tables:
        with transaction.atomic(using=using):
            _copy_beat(using, tables, report)
        _reset_sequences(using, [model for _, model in _SCHEDULES] + [ours.PeriodicTask])
    if results and f"{RESULTS_PREFIX}taskresult" in tables:
        with transaction.atomic(using=using):
            _copy_results(using, tables, report, result_ttl)
    return report


# -- beat -------------------------------------------------------------------------
def _copy_beat(using: str, tables: set[str], report: Report) -> None:
    for suffix, model in _SCHEDULES:
        table = BEAT_PREFIX + suffix
        if table not in tables:
            continue
        for row in _rows(using, table):
            values = _known(model, row)
            model.objects.using(using).update_or_create(id=row["id"], defaults=values)
            report.add(table)
    for row in _rows(using, f"{BEAT_PREFIX}periodictask"):
        _copy_periodic_task(using, row, report)
    # What PeriodicTasks.update_changed() does, on this database: the scheduler reloads.
    ours.PeriodicTasks.objects.using(using).update_or_create(
        ident=1, defaults={"last_update": timezone.now()})


def _copy_periodic_task(using: str, row: dict[str, Any], report: Report) -> None:
    values = _known(ours.PeriodicTask, row)
    values.pop("date_changed", None)  # auto_now: the copy is a change
    values["from_settings"] = False
    manager = ours.PeriodicTask.objects.using(using)
    clash = manager.filter(name=row["name"]).exclude(id=row["id"]).first()
    if clash is not None:
        report.notes.append(f"periodic task {row['name']!r} (id {row['id']}) updated the "
                            f"existing row with that name (id {clash.pk})")
        manager.filter(pk=clash.pk).update(**values)
    else:
        manager.update_or_create(id=row["id"], defaults=values)
    report.add(f"{BEAT_PREFIX}periodictask")


# -- results ----------------------------------------------------------------------
def _copy_results(using: str, tables: set[str], report: Report, ttl: float) -> None:
    from conveyor.contrib.django.results import DjangoResultStore

    store = DjangoResultStore(using=using)
    batch: list[tuple[str, str, bytes]] = []
    for row in _rows(using, f"{RESULTS_PREFIX}taskresult"):
        record = _record(row, report)
        if record is None:
            continue
        batch.append((record.task_id, record.state, record.encode()))
        if len(batch) >= _BATCH:
            store.set_many(batch, ttl)
            report.add(f"{RESULTS_PREFIX}taskresult", len(batch))
            batch = []
    if batch:
        store.set_many(batch, ttl)
        report.add(f"{RESULTS_PREFIX}taskresult", len(batch))
    if f"{RESULTS_PREFIX}groupresult" in tables:
        _copy_groups(using, store, report, ttl)


def _record(row: dict[str, Any], report: Report) -> ResultRecord | None:
    """Celery's row as a Conveyor result record, or None (noted) when it cannot be read."""
    content_type = row.get("content_type") or "application/json"
    if "json" not in content_type:
        report.notes.append(f"result {row['task_id']}: content type {content_type!r} is not "
                            "JSON, not copied")
        return None
    value = _loads(row.get("result"))
    fields: dict[str, Any] = {}
    if row["status"] in states.EXCEPTION_STATES and isinstance(value, dict):
        message = value.get("exc_message")
        if isinstance(message, list):
            message = message[0] if len(message) == 1 else tuple(message)
        fields = {"exc_type": value.get("exc_type"), "exc_module": value.get("exc_module")}
        value = "" if message is None else str(message)
    return ResultRecord(
        task_id=row["task_id"], state=row["status"], result=value,
        traceback=row.get("traceback"), task=row.get("task_name"),
        args=_loads(row.get("task_args")), kwargs=_loads(row.get("task_kwargs")),
        worker=row.get("worker"), date_started=_epoch(row.get("date_started")),
        date_done=_epoch(row.get("date_done")), **fields)


def _copy_groups(using: str, store: Any, report: Report, ttl: float) -> None:
    from conveyor.result import encode_group_ids

    for row in _rows(using, f"{RESULTS_PREFIX}groupresult"):
        ids = _group_ids(_loads(row.get("result")))
        if ids is None:
            report.notes.append(f"group {row['group_id']}: its member list is not readable, "
                                "not copied")
            continue
        store.save_group(row["group_id"], encode_group_ids(ids), ttl)
        report.add(f"{RESULTS_PREFIX}groupresult")


def _group_ids(value: Any) -> list[str] | None:
    """Members of Celery's ``GroupResult.as_tuple()``: ``[[gid, parent], [[[id, p], c], ...]]``."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
        return None
    ids = []
    for item in value[1]:
        head = item[0] if isinstance(item, list) and item else None
        ident = head[0] if isinstance(head, list) and head else head
        if not isinstance(ident, str):
            return None
        ids.append(ident)
    return ids


# -- plumbing ---------------------------------------------------------------------
def _rows(using: str, table: str) -> Iterator[dict[str, Any]]:
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)} ORDER BY id")
        names = [column[0] for column in cursor.description]
        while chunk := cursor.fetchmany(_BATCH):
            for values in chunk:
                yield dict(zip(names, values, strict=True))


def _known(model: type[models.Model], row: dict[str, Any]) -> dict[str, Any]:
    """The row's columns this model also has (``crontab_id`` and the like included)."""
    columns = {f.column: f for f in model._meta.concrete_fields if f.column != "id"}
    return {columns[name].attname: _aware(value)
            if isinstance(columns[name], models.DateTimeField) else value
            for name, value in row.items() if name in columns}


def _reset_sequences(using: str, models_: list[type[models.Model]]) -> None:
    connection = connections[using]
    statements = connection.ops.sequence_reset_sql(no_style(), models_)
    if statements:
        with connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)


def _loads(text: Any) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _aware(value: datetime | str | None) -> datetime | None:
    """A stored time as Django reads it: naive ones are UTC under ``USE_TZ`` (how
    Django writes them to SQLite), local time otherwise."""
    moment = parse_datetime(value) if isinstance(value, str) else value
    if moment is None or moment.tzinfo is not None:
        return moment
    if settings.USE_TZ:
        return moment.replace(tzinfo=UTC)
    return timezone.make_aware(moment)


def _epoch(value: datetime | str | None) -> float | None:
    moment = _aware(value)
    return None if moment is None else moment.timestamp()
