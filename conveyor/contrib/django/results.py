"""``result_backend = "django-db"``: task results in the project's database.

Rows live in the models of :mod:`conveyor.contrib.django.models` (the table
layout is documented there), on the database the router picks for writing
``TaskResult``.  ``payload`` holds the record exactly as the app encoded it;
the other columns (task name, arguments, worker, traceback, dates, retries)
are copied out of it for the admin and for queries.

* ``set`` is one upsert (``INSERT ... ON CONFLICT (task_id) DO UPDATE``).
* ``wait`` polls with an adaptive interval (from 5 ms, growing to 200 ms):
  a portable database has no cross-process wake-up, and a result that lands
  quickly is seen quickly while a long wait costs five small queries a second.
* ``chord_add`` is exactly-once across processes: each header result is a
  row unique on ``(group_id, index)`` inserted with ``ON CONFLICT DO
  NOTHING``, then the chord's counter row is locked (``SELECT ... FOR
  UPDATE``; on SQLite the insert already took the database's write lock), the
  parts are counted and the counter is marked fired, all in one transaction.
  Every caller inserts before it locks and holds the lock until commit, so
  the last caller to take the lock sees every part, and the closed mark under
  the lock lets only one caller through.  ``chord_fail`` closes the same row
  under the same lock, so a chord either fires or fails, once.  A fired
  chord keeps its parts until they expire, plus a part at ``index = size``
  whose payload is the (decimal) header index that completed the join: that
  index's repeated call (a redelivered completer) gets the parts again.
* ``set_fenced`` (the worker's write) reads, compares attempts and writes in
  one transaction that first locks the row.
* Expired rows are ignored by reads and deleted by :meth:`cleanup`, which
  also runs every ``CLEANUP_EVERY`` writes of a store.

Reads and idempotent writes are retried once on a fresh connection when the
database dropped the old one (a restart between calls); ``chord_add`` is not,
since a commit whose acknowledgement was lost must not be replayed.  A
connection that fails again (or a ``chord_add`` cut off) raises
:class:`~conveyor.exceptions.ResultError`, as every store does when it cannot
be reached: the worker then keeps retrying the write for up to a lease and
hands the message back if the database stays away, instead of taking the
driver's error for a bug and dead-lettering a task that ran.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, router, transaction
from django.db.models import F, Q
from django.utils import timezone

from conveyor import states
from conveyor.contrib.django._connections import retry_on_disconnect
from conveyor.contrib.django._time import to_db
from conveyor.contrib.django.models import (
    ChordCounter,
    ChordPart,
    GroupResult,
    TaskResult,
)
from conveyor.exceptions import ResultError
from conveyor.resultstores.base import ResultStore, Stored, deadline_after
from conveyor.resultstores.record import Attempt

CLEANUP_EVERY = 1000
POLL_FIRST = 0.005
POLL_MAX = 0.2
POLL_GROWTH = 1.5
# Long enough to mean "keep", short enough for every database's datetime range.
MAX_TTL = timedelta(days=365 * 100)

_UPDATED = [
    "periodic_task_name", "task_name", "task_args", "task_kwargs", "status", "worker",
    "content_type", "result", "date_started", "date_done", "traceback", "meta", "retries",
    "queue", "payload", "expires_at",
]


def open_result_store(url: str) -> DjangoResultStore:
    """What ``result_backend = "django-db"`` (or ``"django"``) opens.

    Registered in ``pyproject.toml`` under the ``conveyor.result_stores``
    entry-point group, so the core never imports this package: the default
    database alias is chosen per call by Django's router.
    """
    return DjangoResultStore()


F_ = TypeVar("F_", bound=Callable[..., Any])


def _unreachable_is_result_error(method: F_) -> F_:
    """Report a lost or refused database connection as the store being unreachable."""
    @functools.wraps(method)
    def call(self: DjangoResultStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            raise ResultError(f"django-db result store (database {self.db!r}) "
                              f"unreachable: {exc}") from exc
    return call  # type: ignore[return-value]


class DjangoResultStore(ResultStore):
    """See the module docstring."""

    url = "django-db"

    def __init__(self, using: str | None = None) -> None:
        self.using = using
        self._writes = 0

    @property
    def db(self) -> str:
        return self.using or router.db_for_write(TaskResult)

    # -- results -------------------------------------------------------------
    def set(self, task_id: str, state: str, payload: bytes, ttl: float) -> None:
        self.set_many([(task_id, state, payload)], ttl)

    @_unreachable_is_result_error
    def set_many(self, items: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        if not items:
            return
        db = self.db
        retry_on_disconnect(db, lambda: self._upsert(db, items, ttl))
        self._wrote(len(items))

    @staticmethod
    def _upsert(db: str, items: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        expires = _expires_at(ttl)
        # One row per task id: the last write in the batch wins, as with set().
        latest = {task_id: (state, payload) for task_id, state, payload in items}
        rows = [TaskResult(task_id=task_id, status=state, payload=payload, expires_at=expires,
                           **columns_from_payload(payload))
                for task_id, (state, payload) in latest.items()]
        TaskResult.objects.using(db).bulk_create(
            rows, update_conflicts=True, unique_fields=["task_id"], update_fields=_UPDATED)

    @_unreachable_is_result_error
    def set_fenced(self, task_id: str, state: str, payload: bytes, ttl: float,
                   attempt: Attempt) -> bool:
        """Write unless a later run already wrote; read, compare and write in one transaction.

        The transaction opens with a no-op UPDATE of the row: on PostgreSQL
        that locks the row, on SQLite it takes the write lock, so a concurrent
        writer waits for our decision instead of interleaving with it.
        """
        db = self.db

        def write() -> bool:
            with transaction.atomic(using=db):
                rows = TaskResult.objects.using(db).filter(task_id=task_id)
                rows.update(status=F("status"))
                current = rows.filter(expires_at__gt=_now()).values_list("payload",
                                                                         flat=True).first()
                if current is not None and attempt.superseded_by(
                        Attempt.of_payload(bytes(current))):
                    return False
                self._upsert(db, [(task_id, state, payload)], ttl)
                return True

        stored = retry_on_disconnect(db, write)
        if stored:
            self._wrote(1)
        return stored

    def get(self, task_id: str) -> Stored | None:
        return self.get_many([task_id])[0]

    @_unreachable_is_result_error
    def get_many(self, task_ids: Sequence[str]) -> list[Stored | None]:
        def read() -> dict[str, Stored]:
            rows = (TaskResult.objects.using(self.db)
                    .filter(task_id__in=list(task_ids), expires_at__gt=_now())
                    .values_list("task_id", "status", "payload"))
            return {task_id: Stored(state, bytes(payload)) for task_id, state, payload in rows}

        found = retry_on_disconnect(self.db, read)
        return [found.get(task_id) for task_id in task_ids]

    @_unreachable_is_result_error
    def wait(self, task_id: str, timeout: float | None) -> Stored | None:
        deadline = deadline_after(timeout)
        pause = POLL_FIRST
        while True:
            current = self.get(task_id)
            if current is not None and current.ready:
                return current
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return current
                pause = min(pause, remaining)
            time.sleep(pause)
            pause = min(pause * POLL_GROWTH, POLL_MAX)

    @_unreachable_is_result_error
    def forget(self, task_ids: Sequence[str]) -> None:
        retry_on_disconnect(self.db, lambda: TaskResult.objects.using(self.db)
                            .filter(task_id__in=list(task_ids)).delete())

    # -- groups --------------------------------------------------------------
    @_unreachable_is_result_error
    def save_group(self, group_id: str, payload: bytes, ttl: float) -> None:
        row = GroupResult(group_id=group_id, payload=payload, expires_at=_expires_at(ttl),
                          result=_text(payload))
        retry_on_disconnect(self.db, lambda: GroupResult.objects.using(self.db).bulk_create(
            [row], update_conflicts=True, unique_fields=["group_id"],
            update_fields=["payload", "result", "expires_at", "date_done"]))

    @_unreachable_is_result_error
    def load_group(self, group_id: str) -> bytes | None:
        payload = retry_on_disconnect(self.db, lambda: GroupResult.objects.using(self.db)
                                      .filter(group_id=group_id, expires_at__gt=_now())
                                      .values_list("payload", flat=True).first())
        return None if payload is None else bytes(payload)

    # -- the chord join ---------------------------------------------------------
    @_unreachable_is_result_error
    def chord_add(self, chord_id: str, index: int, size: int, payload: bytes,
                  ttl: float) -> list[bytes] | None:
        expires = _expires_at(ttl)
        db = self.db
        with transaction.atomic(using=db):
            # Write first: on SQLite this takes the write lock before any read,
            # so concurrent joins queue up instead of failing to upgrade a lock.
            ChordPart.objects.using(db).bulk_create(
                [ChordPart(group_id=chord_id, index=index, payload=payload,
                           expires_at=expires)], ignore_conflicts=True)
            counter = self._locked_counter(db, chord_id, size, expires)
            parts = ChordPart.objects.using(db).filter(group_id=chord_id)
            if counter.fired:
                return self._repeat(parts, index, size)
            if parts.count() < size:
                return None
            ChordCounter.objects.using(db).filter(pk=counter.pk).update(fired=True)
            ChordPart.objects.using(db).create(group_id=chord_id, index=size,
                                               payload=str(index).encode(), expires_at=expires)
            return self._ordered(parts, size)

    @staticmethod
    def _repeat(parts: Any, index: int, size: int) -> list[bytes] | None:
        """A closed chord: its parts again for the completing index, None for anyone else."""
        completer = parts.filter(index=size).values_list("payload", flat=True).first()
        if completer is None:
            parts.delete()  # failed: a late (or redelivered) member's part goes too
            return None
        if bytes(completer) != str(index).encode():
            return None
        return DjangoResultStore._ordered(parts, size)

    @staticmethod
    def _ordered(parts: Any, size: int) -> list[bytes] | None:
        payloads = dict(parts.filter(index__lt=size).values_list("index", "payload"))
        if len(payloads) < size:
            return None  # expired meanwhile: nothing left to send
        return [bytes(payloads[i]) for i in range(size)]

    @_unreachable_is_result_error
    def chord_fail(self, chord_id: str, ttl: float) -> bool:
        """Close the join for a failed member: True to the first caller, unless it fired.

        The same counter row as :meth:`chord_add`, under the same lock, so a
        closed chord never fires and a fired one is never failed.
        """
        db = self.db
        with transaction.atomic(using=db):
            counter = self._locked_counter(db, chord_id, 0, _expires_at(ttl))
            if counter.fired:
                return False
            ChordCounter.objects.using(db).filter(pk=counter.pk).update(fired=True)
            ChordPart.objects.using(db).filter(group_id=chord_id).delete()
        return True

    @staticmethod
    def _locked_counter(db: str, chord_id: str, size: int, expires: datetime) -> ChordCounter:
        ChordCounter.objects.using(db).bulk_create(
            [ChordCounter(group_id=chord_id, size=size, expires_at=expires)],
            ignore_conflicts=True)
        counter: ChordCounter = (ChordCounter.objects.using(db).select_for_update()
                                 .get(group_id=chord_id))
        return counter

    # -- housekeeping -------------------------------------------------------------
    @_unreachable_is_result_error
    def cleanup(self) -> int:
        now = _now()
        removed = 0
        for model in (TaskResult, GroupResult, ChordPart, ChordCounter):
            def delete(model: Any = model) -> int:
                count, _ = model.objects.using(self.db).filter(Q(expires_at__lte=now)).delete()
                return int(count)

            removed += retry_on_disconnect(self.db, delete)
        return removed

    def _wrote(self, count: int) -> None:
        self._writes += count
        if self._writes >= CLEANUP_EVERY:
            self._writes = 0
            self.cleanup()


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return timezone.now()


def _expires_at(ttl: float | None) -> datetime:
    if ttl is None or ttl != ttl or ttl > MAX_TTL.total_seconds():
        return _now() + MAX_TTL
    return _now() + timedelta(seconds=ttl)


def _from_epoch(value: Any) -> datetime | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return to_db(datetime.fromtimestamp(value, tz=dt_timezone.utc))


def _text(payload: bytes) -> str | None:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=repr)


def columns_from_payload(payload: bytes) -> dict[str, Any]:
    """The display columns of a stored record; empty for payloads that are not records."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(doc, dict) or "task_id" not in doc:
        return {}
    state = doc.get("state")
    return {
        "task_name": _clip(doc.get("task"), 255),
        "task_args": _json(doc.get("args")),
        "task_kwargs": _json(doc.get("kwargs")),
        "worker": _clip(doc.get("worker"), 100),
        "content_type": doc.get("content_type") or "application/json",
        "result": _json(_display_result(doc, state)),
        "date_started": _from_epoch(doc.get("date_started")),
        "date_done": _from_epoch(doc.get("date_done")),
        "traceback": doc.get("traceback"),
        "retries": int(doc.get("retries") or 0),
        "queue": _clip(doc.get("queue"), 200),
        "meta": _json({key: doc[key] for key in ("parent_id", "root_id", "group_id", "children")
                       if doc.get(key)} or None),
    }


def _display_result(doc: dict[str, Any], state: Any) -> Any:
    """django-celery-results' shape: the value, or the exception's description."""
    if state in states.EXCEPTION_STATES and doc.get("exc_type"):
        return {"exc_type": doc.get("exc_type"), "exc_module": doc.get("exc_module"),
                "exc_message": doc.get("result")}
    return doc.get("result")


def _clip(value: Any, length: int) -> str | None:
    return None if value is None else str(value)[:length]


__all__ = ["DjangoResultStore", "columns_from_payload", "open_result_store"]
