"""Switch-over: take the tasks still waiting in Celery's Redis broker and queue them here.

A team moving from Celery stops its Celery workers and starts Conveyor's;
whatever Celery producers queued before the switch, including tasks with
a countdown or an ETA, is still in Celery's Redis lists. This reads them
(Celery's message protocol 2, and protocol 1 for very old producers) and
sends each as a Conveyor task with the same id, so every task runs once and
``AsyncResult(id)`` still names it.

Celery's layout on Redis (kombu's Redis transport), read here::

    <queue>                  list   messages of priority 0..2 (LPUSHed, taken from the right)
    <queue>\\x06\\x16<n>       list   priority steps 3, 6 and 9
    unacked                  hash   delivery tag -> [message, exchange, routing key]:
                                    reserved by a Celery worker that has not acknowledged

Each message is moved atomically (``LMOVE``) onto a staging list
``conveyor:celery-drain:<list>`` before it is sent, and removed from there
only after Conveyor's broker has it; a drain that dies in between resends
the staged message on its next run, and the idempotency key
``celery:<task id>`` keeps that resend from queuing a second copy. A message
this cannot carry over (another content type, a chord) is moved to
``conveyor:celery-skipped:<list>`` with nothing lost, and reported.

``unacked`` is read only when asked (``include_unacked``): a Celery worker
that is still running owns those messages, and taking them would run them
twice. Celery workers put them back on their lists when they stop cleanly.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from conveyor.canvas import Signature, chain

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.celery_drain")

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
STAGING = "conveyor:celery-drain:"
SKIPPED = "conveyor:celery-skipped:"
# Celery signature options that mean the same here when sent.
_SIGNATURE_OPTIONS = ("queue", "priority", "countdown", "eta", "expires", "task_id")


class CannotCarry(ValueError):
    """A Celery message with no Conveyor equivalent (it is kept, and reported)."""


@dataclass(frozen=True)
class CeleryCall:
    """What a Celery message asks for, read from its headers, properties and body."""

    id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    chain: list[dict[str, Any]] = field(default_factory=list)  # Celery order: last step first


@dataclass
class DrainReport:
    """How many messages were moved, and which were kept aside and why."""

    moved: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (list, reason)


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _signature(data: Mapping[str, Any], app: Conveyor) -> Signature:
    options = {k: v for k, v in (data.get("options") or {}).items() if k in _SIGNATURE_OPTIONS}
    return Signature(str(data["task"]), tuple(data.get("args") or ()),
                     dict(data.get("kwargs") or {}), options=options,
                     immutable=bool(data.get("immutable")), app=app)


def read_message(raw: bytes | str) -> tuple[dict[str, Any], Any]:
    """A Celery message's envelope and decoded body."""
    envelope = json.loads(raw)
    content_type = envelope.get("content-type")
    if content_type != "application/json":
        raise CannotCarry(f"content type {content_type!r} (only JSON is read)")
    body = envelope.get("body")
    properties = envelope.get("properties") or {}
    if properties.get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return envelope, json.loads(body)


def parse_call(raw: bytes | str) -> CeleryCall:
    """Read a protocol 2 (or 1) Celery task message."""
    envelope, body = read_message(raw)
    headers = envelope.get("headers") or {}
    properties = envelope.get("properties") or {}
    if "task" in headers:  # protocol 2: [args, kwargs, embed]
        args, kwargs, embed = body
        info = headers
    else:  # protocol 1: everything in the body
        args, kwargs, embed, info = body.get("args"), body.get("kwargs"), body, body
    if embed.get("chord"):
        raise CannotCarry("a chord member: its join lives in Celery's result backend")
    options: dict[str, Any] = {
        "eta": _when(info.get("eta")),
        "expires": _when(info.get("expires")),
        "retries": int(info.get("retries") or 0),
        "root_id": info.get("root_id"),
        "parent_id": info.get("parent_id"),
        "priority": properties.get("priority"),
    }
    for key, celery_key in (("link", "callbacks"), ("link_error", "errbacks")):
        if embed.get(celery_key):
            options[key] = list(embed[celery_key])
    return CeleryCall(id=str(info["id"]), task=str(info["task"]), args=list(args or ()),
                      kwargs=dict(kwargs or {}),
                      options={k: v for k, v in options.items() if v not in (None, 0, [])},
                      chain=list(embed.get("chain") or ()))


def send_call(app: Conveyor, call: CeleryCall) -> None:
    """Queue ``call`` in Conveyor under its Celery id, at most once per id."""
    options = dict(call.options)
    for key in ("link", "link_error"):
        if key in options:
            options[key] = [_signature(d, app) for d in options[key]]
    options.update(task_id=call.id, idempotency_key=f"celery:{call.id}")
    if not call.chain:
        app.send_task(call.task, call.args, call.kwargs, **options)
        return
    first = Signature(call.task, tuple(call.args), call.kwargs, options=options, app=app)
    steps = [_signature(step, app) for step in reversed(call.chain)]
    chain(first, *steps, app=app).apply_async()


class CeleryRedisDrain:
    """Moves one Celery Redis broker's waiting tasks into ``app``'s broker."""

    def __init__(self, app: Conveyor, url: str, queues: Sequence[str] = ("celery",),
                 include_unacked: bool = False, key_prefix: str = "") -> None:
        import redis as redis_module

        self.app = app
        # Any: redis-py's annotations do not follow decode_responses.
        self.client: Any = redis_module.Redis.from_url(url)
        self.queues = list(queues)
        self.include_unacked = include_unacked
        self.prefix = key_prefix

    def lists(self) -> Iterator[str]:
        for queue in self.queues:
            for step in PRIORITY_STEPS:
                name = queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}"
                yield self.prefix + name

    def run_once(self) -> DrainReport:
        """Move everything waiting now; safe to run again (and to run concurrently)."""
        report = DrainReport()
        for name in self.lists():
            self._drain_list(name, report)
        if self.include_unacked:
            self._drain_unacked(report)
        return report

    def _drain_list(self, name: str, report: DrainReport) -> None:
        staging = STAGING + name
        for raw in self.client.lrange(staging, 0, -1):  # left by a drain that died
            self._carry(name, staging, raw, report)
        while True:
            raw = self.client.lmove(name, staging, "RIGHT", "LEFT")
            if raw is None:
                return
            self._carry(name, staging, raw, report)

    def _carry(self, name: str, staging: str, raw: bytes, report: DrainReport) -> None:
        try:
            send_call(self.app, parse_call(raw))
        except (CannotCarry, ValueError, KeyError, TypeError) as exc:
            reason = str(exc)
            log.warning("kept Celery message from %s aside in %s%s: %s", name, SKIPPED, name,
                        reason)
            self.client.lpush(SKIPPED + name, raw)
            report.skipped.append((name, reason))
        else:
            report.moved += 1
        self.client.lrem(staging, 1, raw)

    def _drain_unacked(self, report: DrainReport) -> None:
        hash_key, index_key = self.prefix + "unacked", self.prefix + "unacked_index"
        for tag, payload in self.client.hgetall(hash_key).items():
            message = json.loads(payload)[0]
            raw = json.dumps(message)
            try:
                send_call(self.app, parse_call(raw))
            except (CannotCarry, ValueError, KeyError, TypeError) as exc:
                self.client.lpush(SKIPPED + "unacked", raw)
                report.skipped.append(("unacked", str(exc)))
            else:
                report.moved += 1
            pipe = self.client.pipeline()
            pipe.hdel(hash_key, tag)
            pipe.zrem(index_key, tag)
            pipe.execute()
