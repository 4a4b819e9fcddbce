"""Task views: search, running tasks with progress, and one task's whole story.

A task's detail joins three sources: the result store (args, kwargs,
result or traceback, retries, family links), the event index (queue,
worker, timings) and the timeline (what happened, including actions taken
here).  Results stored with pickle are not unpickled by the monitor: it
shows that a value exists, not the value, so looking at a task can never
run code.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor._events import EventStore
from conveyor.exceptions import ConveyorError
from conveyor.monitor import values
from conveyor.resultstores import ResultRecord, Stored

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.monitor")
MAX_FAMILY = 200


def progress_of(meta: Any) -> float | None:
    """Percent done from PROGRESS meta: ``{"current", "total"}``, ``percent`` or ``progress``."""
    if not isinstance(meta, dict):
        return None
    current = _num(meta.get("current", meta.get("done")))
    total = _num(meta.get("total"))
    if current is not None and total:
        return _clamp(100.0 * current / total)
    percent, fraction = _num(meta.get("percent")), _num(meta.get("progress"))
    if percent is not None:
        return _clamp(percent)
    if fraction is not None:
        return _clamp(fraction * 100 if fraction <= 1 else fraction)
    return None


def _num(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def _clamp(percent: float) -> float:
    return max(0.0, min(100.0, percent))


def decode(stored: Stored | None) -> ResultRecord | None:
    """A stored record, without ever unpickling (pickled values become a placeholder)."""
    if stored is None:
        return None
    try:
        return ResultRecord.decode(stored.payload, accept_content=["json"])
    except (ConveyorError, ValueError, TypeError, RecursionError):
        try:
            doc = json.loads(stored.payload)
        except (ValueError, RecursionError):
            return ResultRecord(task_id="?", state=stored.state, result="<undecodable record>")
        doc["result"] = f"<{doc.get('content_type', 'non-JSON')} value not shown>"
        doc.pop("content_type", None)
        fields = {k: v for k, v in doc.items() if k in ResultRecord.__dataclass_fields__}
        return ResultRecord(**fields)


def running(app: Conveyor, store: EventStore) -> list[dict[str, Any]]:
    """What online workers run now, with progress where tasks report it."""
    active = [{**task, "worker": w["id"]} for w in store.workers() if w["online"]
              for task in (w.get("active") or [])]
    if not active:
        return []
    stored = app.backend.get_many([str(task["id"]) for task in active])
    for task, found in zip(active, stored, strict=True):
        record = decode(found)
        task["state"] = record.state if record else states.STARTED
        meta = record.result if record and record.state not in states.READY_STATES else None
        task["meta"] = plain(meta)
        task["progress"] = progress_of(meta)
    return active


def detail(app: Conveyor, store: EventStore, task_id: str) -> dict[str, Any] | None:
    """Everything known about one task, or None when nothing is."""
    record = decode(app.backend.get(task_id))
    entry = store.task(task_id)
    timeline = [e.to_dict() for e in store.timeline(task_id)]
    if record is None and entry is None and not timeline:
        return None
    out: dict[str, Any] = {"task_id": task_id, "state": states.PENDING}
    if entry is not None:
        out.update(entry.to_dict())
    if record is not None:
        out.update(_record_fields(record))
    out["timeline"] = timeline
    out["progress"] = progress_of(record.result) if record else None
    out["revoked"] = task_id in app.broker.revoked([task_id])
    out["children"] = _family(app, store, record.children if record else [])
    out["group"] = _group(app, store, record.group_id if record else None)
    return out


def _record_fields(record: ResultRecord) -> dict[str, Any]:
    args, cut_args = values.shown(record.args or [])
    kwargs, cut_kwargs = values.shown(record.kwargs or {})
    result, cut_result = values.shown(record.result)
    traceback, cut_tb = values.shown(record.traceback, 4 * values.BUDGET)
    fields = {
        "state": record.state, "args": args, "kwargs": kwargs, "result": result,
        "traceback": traceback,
        "truncated": cut_args or cut_kwargs or cut_result or cut_tb,
        "exc_type": record.exc_type, "exc_module": record.exc_module,
        "retries": record.retries, "parent_id": record.parent_id, "root_id": record.root_id,
        "group_id": record.group_id, "date_started": record.date_started,
        "date_done": record.date_done,
    }
    if record.task:
        fields["name"] = record.task
    if record.queue:
        fields["queue"] = record.queue
    if record.worker:
        fields["worker_host"] = record.worker
    return fields


def _family(app: Conveyor, store: EventStore, ids: list[str]) -> list[dict[str, Any]]:
    ids = ids[:MAX_FAMILY]
    if not ids:
        return []
    found = app.backend.get_many(ids)
    out = []
    for task_id, stored in zip(ids, found, strict=True):
        entry = store.task(task_id)
        record = decode(stored)
        out.append({"task_id": task_id,
                    "state": stored.state if stored else (entry.state if entry else "PENDING"),
                    "name": (record.task if record else None) or (entry.name if entry else None)})
    return out


def _group(app: Conveyor, store: EventStore, group_id: str | None) -> dict[str, Any] | None:
    if not group_id:
        return None
    body = app.backend.load_group(group_id)
    members: list[str] = []
    if body is not None:
        try:
            members = [str(m) for m in json.loads(body).get("results", [])]
        except (ValueError, AttributeError):
            members = []
    return {"group_id": group_id, "members": _family(app, store, members)}


def plain(value: Any) -> Any:
    """A JSON-safe, size-bounded copy of a decoded value (odd types become their repr)."""
    return values.shown(value)[0]
