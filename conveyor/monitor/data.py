"""Read models: what the pages, the JSON API, /metrics and the CLI show.

Plain functions from the app and its stores to JSON-ready dicts, with no
web framework in sight, so the CLI (``conveyor status``) and the HTTP API
agree on every number.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import _redact as redact
from conveyor._events import BUCKETS, DEAD, OUTCOMES, RUNTIME, WAIT, EventStore
from conveyor._serialization import printable
from conveyor.brokers.base import QueueStats
from conveyor.monitor import values

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.monitor")

HOUR, DAY = 3600, 86400
PERCENTILES = (0.5, 0.9, 0.95, 0.99)


def step_for(window: int) -> int:
    """Chart resolution: a point per minute up to three hours, per 10 minutes beyond."""
    return 60 if window <= 3 * HOUR else 600


# -- histograms ----------------------------------------------------------------
def percentile(counts: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of a bucketed histogram, interpolated inside its bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low = BUCKETS[index - 1] if index > 0 else 0.0
            if index >= len(BUCKETS):
                return BUCKETS[-1]  # above the last bound: report the bound
            return low + (BUCKETS[index] - low) * ((rank - seen) / count)
        seen += count
    return BUCKETS[-1]


@functools.cache
def _parse(metric: str) -> tuple[str, str, int]:
    """``n:SUCCESS`` -> (n, SUCCESS, 0); ``rt:sum`` -> (sum, rt, 0); ``rt:3`` -> (bucket, rt, 3).

    Cached: a day's cells repeat the same few dozen metric names.
    """
    kind, _, rest = metric.partition(":")
    if kind == "n":
        return "n", rest, 0
    if kind in (RUNTIME, WAIT) and rest == "sum":
        return "sum", kind, 0
    if kind in (RUNTIME, WAIT) and rest.isdigit() and int(rest) <= len(BUCKETS):
        return "bucket", kind, int(rest)
    return "other", "", 0


@dataclass
class _Agg:
    """Counters and both histograms for one time bucket or one task."""

    counts: dict[str, float] = field(default_factory=dict)
    hist: dict[str, list[float]] = field(
        default_factory=lambda: {RUNTIME: [0.0] * (len(BUCKETS) + 1),
                                 WAIT: [0.0] * (len(BUCKETS) + 1)})
    sums: dict[str, float] = field(default_factory=lambda: {RUNTIME: 0.0, WAIT: 0.0})

    def add(self, metric: str, value: float) -> None:
        kind, key, index = _parse(metric)
        if kind == "n":
            self.counts[key] = self.counts.get(key, 0) + value
        elif kind == "sum":
            self.sums[key] += value
        elif kind == "bucket":
            self.hist[key][index] += value

    def merge(self, other: _Agg) -> None:
        for state, count in other.counts.items():
            self.counts[state] = self.counts.get(state, 0) + count
        for kind, row in other.hist.items():
            mine = self.hist[kind]
            for index, count in enumerate(row):
                mine[index] += count
        for kind, total in other.sums.items():
            self.sums[kind] += total

    @property
    def total(self) -> float:
        return sum(self.counts.get(s, 0) for s in OUTCOMES)

    def latency(self, kind: str) -> dict[str, float | None]:
        counts = self.hist[kind]
        seen = sum(counts)
        out: dict[str, float | None] = {
            f"p{int(q * 100)}": percentile(counts, q) for q in PERCENTILES}
        out["mean"] = self.sums[kind] / seen if seen else None
        out["count"] = seen
        return out


def overview(store: EventStore, window: int = HOUR, now: float | None = None) -> dict[str, Any]:
    """Throughput, outcome rates and latency percentiles over the last ``window`` s."""
    now = time.time() if now is None else now
    step = step_for(window)
    first = int((now - window) // step * step) + step
    points = {t: _Agg() for t in range(first, int(now) + 1, step)}
    tasks: dict[str, _Agg] = {}
    whole = _Agg()
    for t, name, metric, value in store.cells(first, now, step):
        if t in points:
            points[t].add(metric, value)
        agg = tasks.get(name)
        if agg is None:
            agg = tasks[name] = _Agg()
        agg.add(metric, value)
    for agg in tasks.values():
        whole.merge(agg)
    total = whole.total
    return {
        "window": window,
        "step": step,
        "now": now,
        "series": [_point(t, agg, step) for t, agg in points.items()],
        "totals": {**{s: whole.counts.get(s, 0) for s in OUTCOMES}, "total": total},
        "rates": _rates(whole),
        "throughput_per_minute": total / (window / 60),
        "latency": {"runtime": whole.latency(RUNTIME), "wait": whole.latency(WAIT)},
        "tasks": sorted((_task_row(name, agg) for name, agg in tasks.items()),
                        key=lambda row: -row["total"]),
    }


def _point(t: int, agg: _Agg, step: int) -> dict[str, Any]:
    runtime, wait = agg.latency(RUNTIME), agg.latency(WAIT)
    return {
        "t": t,
        **{s: agg.counts.get(s, 0) for s in OUTCOMES},
        "per_minute": agg.total / (step / 60),
        "runtime_p50": runtime["p50"], "runtime_p95": runtime["p95"],
        "wait_p50": wait["p50"], "wait_p95": wait["p95"],
    }


def _rates(agg: _Agg) -> dict[str, float | None]:
    total = agg.total
    if not total:
        return {"success": None, "failure": None, "retry": None}
    failed = agg.counts.get("FAILURE", 0) + agg.counts.get(DEAD, 0)
    return {"success": agg.counts.get("SUCCESS", 0) / total, "failure": failed / total,
            "retry": agg.counts.get("RETRY", 0) / total}


def _task_row(name: str, agg: _Agg) -> dict[str, Any]:
    runtime, wait = agg.latency(RUNTIME), agg.latency(WAIT)
    return {"name": name, **{s: agg.counts.get(s, 0) for s in OUTCOMES}, "total": agg.total,
            "runtime_p50": runtime["p50"], "runtime_p95": runtime["p95"],
            "runtime_mean": runtime["mean"], "wait_p50": wait["p50"], "wait_p95": wait["p95"]}


def histograms(store: EventStore, window: int, now: float | None = None) -> dict[str, _Agg]:
    """Per task: cumulative counters and histograms over ``window`` (for /metrics)."""
    now = time.time() if now is None else now
    out: dict[str, _Agg] = {}
    for _, name, metric, value in store.cells(now - window, now, window):
        out.setdefault(name, _Agg()).add(metric, value)
    return out


# -- workers and queues --------------------------------------------------------
def workers(store: EventStore, now: float | None = None) -> list[dict[str, Any]]:
    """Every worker heard from in the last hour, online ones first."""
    now = time.time() if now is None else now
    out = []
    for info in store.workers():
        beat = float(info.get("heartbeat_at") or 0)
        out.append({**info, "last_seen": now - beat,
                    "active_count": len(info.get("active") or [])})
    out.sort(key=lambda w: (not w["online"], str(w.get("hostname")), str(w.get("id"))))
    return out


def queues(app: Conveyor, store: EventStore, window: int = HOUR,
           now: float | None = None) -> dict[str, Any]:
    """Live depths per queue, plus the per-minute samples for the history chart."""
    now = time.time() if now is None else now
    broker = app.broker
    try:
        store.sample_queues(broker)  # workers sample too; whoever comes first
    except Exception as exc:  # a read-only view must still answer
        log.warning("could not sample queue depths: %s", exc)
    current = [_queue_row(s) for s in broker.stats()]
    history: dict[str, list[dict[str, Any]]] = {}
    for s in store.queue_samples(now - window, now):
        history.setdefault(s.queue, []).append(
            {"t": s.minute, "ready": s.ready, "delayed": s.delayed,
             "inflight": s.inflight, "dead": s.dead})
    return {"now": now, "window": window, "queues": current, "history": history}


def _queue_row(s: QueueStats) -> dict[str, Any]:
    return {"queue": s.queue, "ready": s.ready, "delayed": s.delayed, "inflight": s.inflight,
            "dead": s.dead, "oldest_age": s.oldest_age}


# -- "is it working?" ------------------------------------------------------------
#: How many beat entries the overview lists (the soonest first); the rest are a click away.
NEXT_TICKS = 5


def status(app: Conveyor, store: EventStore, now: float | None = None) -> dict[str, Any]:
    """The overview's answer to "is it working?": workers online and offline, each
    queue's depth and oldest waiting message, dead letters waiting, beat's leader and
    its next ticks.  Each part is read on its own: a broker that cannot be reached
    leaves the workers and beat readable, with the part's ``errors`` entry saying why."""
    now = time.time() if now is None else now
    errors: dict[str, str] = {}
    out: dict[str, Any] = {"now": now, "errors": errors}
    out["workers"] = _part("workers", errors, lambda: _worker_summary(store, now))
    out["queues"] = _part("queues", errors, lambda: [_queue_row(s) for s in app.broker.stats()])
    queues_found = out["queues"] or []
    out["dead_letters"] = sum(q["dead"] for q in queues_found) if out["queues"] is not None \
        else None
    out["beat"] = _part("beat", errors, lambda: _beat_summary(app))
    return out


def _part(name: str, errors: dict[str, str], read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception as exc:  # one source down must not blank the others
        log.warning("overview: could not read the %s: %s", name, exc)
        errors[name] = printable(str(exc), 300)
        return None


def _worker_summary(store: EventStore, now: float) -> dict[str, Any]:
    found = workers(store, now)
    online = sum(1 for w in found if w["online"])
    return {"online": online, "offline": len(found) - online, "items": [
        {"id": w.get("id"), "hostname": w.get("hostname"), "online": w["online"],
         "queues": w.get("queues") or [], "active_count": w["active_count"],
         "last_seen": w["last_seen"]} for w in found]}


def _beat_summary(app: Conveyor) -> dict[str, Any]:
    doc = schedules(app)
    entries = [e for e in doc.get("entries") or [] if e.get("next_run")]
    entries.sort(key=lambda e: str(e["next_run"]))
    return {"leader": doc.get("holder"), "alive_at": doc.get("alive_at"),
            "timezone": doc.get("timezone"), "entries": len(doc.get("entries") or []),
            "next": [{"name": e.get("name"), "task": e.get("task"), "next_run": e["next_run"]}
                     for e in entries[:NEXT_TICKS]]}


def schedules(app: Conveyor) -> dict[str, Any]:
    """Beat entries with last and next run, and who holds the beat lease."""
    try:
        from conveyor.beat import beat_status
    except ImportError:  # a build without beat: show the settings as they are
        return {"holder": app.broker.lease_holder("beat"), "entries": [
            {"name": name, "task": spec.get("task"), "schedule": repr(spec.get("schedule"))}
            for name, spec in app.conf.beat_schedule.items()]}
    return beat_status(app)


#: Dead letters larger than this are listed without parsing their body (download it).
PARSE_LIMIT = 1024 * 1024
#: What one letter's arguments and body text may take in the list.
LETTER_BUDGET = 2048
#: How far the download route looks for one letter, newest first.
FIND_LIMIT = 10_000


def dead_letters(app: Conveyor, queue: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Dead letters, newest first, with the task name and arguments read from the body.

    Every value is shown cut short (``truncated`` says when): one letter of
    megabytes must not make each poll of the page as large.
    """
    broker = app.broker
    names = [queue] if queue else broker.queues()
    out = []
    for name in names:
        for letter in broker.dead_letters(name, limit=limit):
            out.append({"id": letter.id, "queue": letter.queue,
                        "reason": printable(str(letter.reason or ""), LETTER_BUDGET),
                        "failed_at": _time(letter.failed_at), "size": len(letter.body),
                        **_body_view(app, letter.body)})
    out.sort(key=lambda d: -d["failed_at"])
    return out[:limit]


def dead_letter_body(app: Conveyor, queue: str, letter_id: str) -> bytes | None:
    """One letter's body as stored (arguments redacted as the task or call asked),
    or None (looked for among the newest FIND_LIMIT)."""
    for offset in range(0, FIND_LIMIT, 500):
        letters = app.broker.dead_letters(queue, limit=500, offset=offset)
        for letter in letters:
            if letter.id == letter_id:
                return redacted_body(app, letter.body)
        if len(letters) < 500:
            return None
    return None


def _time(value: Any) -> float:
    try:
        number = float(value or 0)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def redacted_body(app: Conveyor, body: bytes) -> bytes:
    """A stored message body with secret arguments hidden (:func:`redacted_message`);
    the same bytes when nothing is hidden or the body is not a JSON message."""
    doc, _ = values.parse(body, PARSE_LIMIT)
    if not isinstance(doc, dict):
        return body
    shown = redacted_message(app, doc)
    return body if shown is doc else values.dumps(shown)


def redacted_message(app: Conveyor, doc: dict[str, Any]) -> dict[str, Any]:
    """A message body (or a signature in its workflow) with its arguments as people may
    see them (:meth:`Conveyor.shown_arguments`); ``doc`` itself when nothing is hidden."""
    changes: dict[str, Any] = {}
    for key in ("chain", "callbacks", "errbacks"):
        if isinstance(doc.get(key), list):
            steps = [redacted_message(app, s) if isinstance(s, dict) else s for s in doc[key]]
            if any(a is not b for a, b in zip(steps, doc[key], strict=True)):
                changes[key] = steps
    # A message keeps argsrepr in its headers; a signature in the workflow, in its options.
    headers: dict[str, Any] = {}
    for key in ("headers", "options"):
        found = doc.get(key)
        if isinstance(found, dict):
            headers.update(found)
    name = doc.get("task") if isinstance(doc.get("task"), str) else None
    task = app.tasks.get(name) if name else None
    keys = task.options.redact if task is not None else ()
    if redact.arguments_hidden(headers, keys):
        if doc.get("content_type") not in (None, "application/json"):
            changes.update(args=redact.MASK, kwargs=redact.MASK)  # encoded: cannot pick keys
        else:
            changes["args"], changes["kwargs"] = app.shown_arguments(
                name, doc.get("args"), doc.get("kwargs"), headers)
    return {**doc, **changes} if changes else doc


def _body_view(app: Conveyor, body: bytes) -> dict[str, Any]:
    doc, why = values.parse(body, PARSE_LIMIT)
    if not isinstance(doc, dict):
        text = body[:LETTER_BUDGET].decode("utf-8", "replace")
        note = why or f"a JSON {type(doc).__name__}, not a message"
        return {"task": None, "task_id": None, "args": None, "kwargs": None,
                "body": f"{text}\n…({note})" if len(body) > LETTER_BUDGET else text,
                "truncated": len(body) > LETTER_BUDGET}
    doc = redacted_message(app, doc)
    args, cut_args = values.shown(doc.get("args"), LETTER_BUDGET)
    kwargs, cut_kwargs = values.shown(doc.get("kwargs"), LETTER_BUDGET)
    shown, cut_body = values.shown(doc, LETTER_BUDGET)
    return {"task": _text(doc.get("task")), "task_id": _text(doc.get("id")),
            "args": args, "kwargs": kwargs, "body": values.dumps_pretty(shown),
            "truncated": cut_args or cut_kwargs or cut_body}


def _text(value: Any) -> str | None:
    return printable(value, 200) if isinstance(value, str) else None
