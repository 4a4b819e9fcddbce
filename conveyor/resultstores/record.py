"""What a result store holds for one task, and how it is encoded.

A record is JSON: the state, the value (``result``) encoded with the result
serializer, and the context the monitor and ``AsyncResult`` need (task name,
worker, retries, timings, family links).  Failures store the exception's
module, type name and message plus the formatted traceback, so the caller can
re-raise the same type when it can import it.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from conveyor import states
from conveyor._frozen import from_mapping, quick_init
from conveyor._serialization import (
    JSON,
    JSON_SCALARS,
    check_accepted_once,
    decode_payload,
    dumps_json,
    encode_payload,
    loads_json,
    to_jsonable,
    utf8,
)
from conveyor.exceptions import RemoteTaskError, ResultTooLarge, SerializationError

log = logging.getLogger("conveyor.resultstores")


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One task's outcome or progress."""

    task_id: str
    state: str
    result: Any = None
    traceback: str | None = None
    exc_type: str | None = None
    exc_module: str | None = None
    task: str | None = None
    args: Any = None
    kwargs: Any = None
    queue: str | None = None
    worker: str | None = None
    retries: int = 0
    date_received: float | None = None
    date_started: float | None = None
    date_done: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    children: list[str] = field(default_factory=list)
    content_type: str = JSON
    attempt: list[int] | None = None  # Attempt.as_list() of the run that wrote it

    def evolve(self, **changes: Any) -> ResultRecord:
        return replace(self, **changes)

    def encode(self, max_bytes: int | None = None, warn_bytes: int | None = None) -> bytes:
        """Serialize; refuse above ``max_bytes`` and log above ``warn_bytes``.

        Every worker run writes one or two records, so this builds the
        document in one pass (no copy of the record, no filtering pass).
        Fields that are None or an empty list are left out; "result" always
        stays, so a task that returned [] does not read back as None.
        """
        doc: dict[str, Any] = {
            "task_id": self.task_id,
            "state": self.state,
            "result": encode_payload(self.result, self.content_type, "the task's return value"),
        }
        for name in _OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is None or (type(value) is list and not value):
                continue
            doc[name] = _safe_jsonable(value) if name in _INFORMATIVE else value
        text = dumps_json(doc)
        try:
            body = text.encode()
        except UnicodeEncodeError:
            body = self._escaped(text)
        _check_size(self, len(body), max_bytes, warn_bytes)
        return body

    def _escaped(self, text: str) -> bytes:
        """A record holding a lone surrogate: refused when it is the task's value,
        else (arguments, an exception's text) stored as a ``\\udXXX`` JSON escape.

        The escape is valid JSON and reads back as the same string; a value is
        refused all the same, so the caller learns of it (as a FAILURE naming
        it) rather than handing it to code that cannot write it anywhere.
        """
        if self.state != states.FAILURE:
            utf8(dumps_json(encode_payload(self.result, self.content_type, "result")),
                 lambda: [("the task's return value", self.result)])
        return text.encode("utf-8", "backslashreplace")

    @classmethod
    def decode(cls, payload: bytes, accept_content: list[str] | None = None) -> ResultRecord:
        """Parse a stored record; fields this version does not know are dropped."""
        doc = loads_json(payload.decode())  # records are UTF-8: skip loads' sniffing
        content_type = doc.get("content_type", JSON)
        if accept_content is not None:
            check_accepted_once(content_type, accept_content)
        result = doc.get("result")
        if type(result) not in JSON_SCALARS or content_type != JSON:
            result = decode_payload(result, content_type)
        doc["result"] = result
        return _make_record(doc)

    def exception(self) -> BaseException:
        """Rebuild the task's exception, the same type where it can be imported."""
        message = self.result if isinstance(self.result, str) else str(self.result)
        exc_cls = _import_exception(self.exc_module, self.exc_type)
        if exc_cls is None:
            exc: BaseException = RemoteTaskError(self.exc_type or "Exception", message)
        else:
            try:
                exc = exc_cls(message)
            except Exception:
                exc = RemoteTaskError(self.exc_type or "Exception", message)
        if self.traceback:
            exc.__notes__ = [f"Remote traceback (task {self.task_id}):\n{self.traceback}"]
        return exc


quick_init(ResultRecord)
_make_record = from_mapping(ResultRecord)
_FIELD_ORDER = tuple(ResultRecord.__dataclass_fields__)
# encode() writes task_id, state and result first, then these in field order.
_FIELDS = frozenset(_FIELD_ORDER)
_OPTIONAL_FIELDS = tuple(f for f in _FIELD_ORDER if f not in ("task_id", "state", "result"))
_INFORMATIVE = frozenset({"args", "kwargs"})  # user values: stored as far as JSON can


@dataclass(frozen=True, slots=True)
class Attempt:
    """Which run of which message wrote a record: the fence against stale runs.

    A worker paused past its lease (SIGSTOP, a long GC, a VM migration) may
    wake and finish a task that another worker has run again meanwhile; its
    late write must not replace the newer run's (docs/decisions/0004).
    ``sent`` (the message's creation time, in microseconds) tells one message
    from another sent with the same task id; ``retries`` and ``deliveries``
    order the runs of one message: the broker counts every hand-out, so the
    run that took over a lapsed lease always has more deliveries.
    """

    sent: int
    retries: int
    deliveries: int

    def as_list(self) -> list[int]:
        return [self.sent, self.retries, self.deliveries]

    @classmethod
    def of_payload(cls, payload: bytes) -> Attempt | None:
        """The attempt recorded in an encoded record, if it has one."""
        try:
            found = json.loads(payload).get("attempt")
            sent, retries, deliveries = (int(v) for v in found)
        except (ValueError, TypeError, AttributeError):
            return None
        return cls(sent, retries, deliveries)

    def superseded_by(self, stored: Attempt | None) -> bool:
        """True when ``stored`` was written by a later run of the same task call.

        Within one message the later run has more retries or deliveries; a
        retry is a new message, sent after the run it retries.  A record of
        another send of the task id (a different ``sent``, no more retries)
        never blocks a write.
        """
        if stored is None:
            return False
        if stored.sent == self.sent:
            return (stored.retries, stored.deliveries) > (self.retries, self.deliveries)
        return stored.retries > self.retries and stored.sent > self.sent


def _safe_jsonable(value: Any) -> Any:
    """Args are informative only in results: store what JSON can, repr the rest."""
    if type(value) is list and all(type(item) in JSON_SCALARS for item in value):
        return value  # the common case, as to_jsonable would return it, without its walk
    try:
        return to_jsonable(value, "args")
    except SerializationError:
        return repr(value)


def _check_size(record: ResultRecord, size: int, max_bytes: int | None, warn: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ResultTooLarge(
            f"result of task {record.task or '?'}[{record.task_id}] is {size} bytes, above "
            f"result_max_bytes={max_bytes}; store large data elsewhere (a file, the database) "
            "and return a reference to it"
        )
    if warn is not None and size > warn:
        log.warning(
            "result of task %s[%s] is %d bytes (result_warn_bytes=%d); results are meant "
            "to be small", record.task, record.task_id, size, warn,
        )


def _import_exception(module: str | None, name: str | None) -> type[BaseException] | None:
    if not module or not name:
        return None
    try:
        candidate: Any = importlib.import_module(module)
        for part in name.split("."):  # qualified names, e.g. Order.DoesNotExist
            candidate = getattr(candidate, part)
    except Exception:
        return None
    if isinstance(candidate, type) and issubclass(candidate, BaseException):
        return candidate
    return None


def describe_exception(exc: BaseException) -> dict[str, str]:
    """The fields a FAILURE record keeps about ``exc``."""
    kind = type(exc)
    return {"exc_type": kind.__qualname__, "exc_module": kind.__module__, "result": str(exc)}


__all__ = ["Attempt", "ResultRecord", "SerializationError", "describe_exception"]
