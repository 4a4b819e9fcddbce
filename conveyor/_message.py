"""The message envelope: one immutable, versioned JSON document per task call.

The wire format is documented in ``docs/protocol.md``.  Brokers never look
inside a body; they move bytes and the few routing fields they are handed
alongside (id, queue, priority, eta).  That keeps a malformed body from
breaking a broker: the worker decodes, and dead-letters what it cannot.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone, tzinfo
from typing import Any

from conveyor._frozen import from_mapping, quick_init
from conveyor._serialization import (
    JSON,
    JSON_SCALARS,
    TAG,
    check_accepted_once,
    decode_payload,
    dumps_json,
    encode_payload,
    loads_json,
    printable,
    to_jsonable,
    utf8,
)
from conveyor.exceptions import SerializationError

PROTOCOL_VERSION = 1

SignatureDict = dict[str, Any]


def new_id() -> str:
    """A fresh task id (UUID4 text, like Celery's).

    Formats 16 random bytes directly, with the version (4) and variant (RFC
    4122) bits set as ``uuid.uuid4`` sets them: the same text at a third of
    ``str(uuid.uuid4())``'s cost, which matters when sending thousands.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# The variant's two top bits are 10: the 17th hex digit is one of 8, 9, a, b.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class MessageDecodeError(SerializationError):
    """A body that is not a valid Conveyor message; the reason says why."""


@dataclass(frozen=True, slots=True)
class Message:
    """One task call.  Frozen: a retry or a chain step is a new message."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    created: float = field(default_factory=time.time)
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    chord: SignatureDict | None = None
    chain: tuple[SignatureDict, ...] = ()
    callbacks: tuple[SignatureDict, ...] = ()
    errbacks: tuple[SignatureDict, ...] = ()
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str = JSON
    v: int = PROTOCOL_VERSION

    def evolve(self, **changes: Any) -> Message:
        """A copy with ``changes`` applied (messages are never mutated)."""
        return replace(self, **changes)

    def encode(self) -> bytes:
        """Serialize to the wire format; raises naming the argument that cannot travel."""
        return utf8(dumps_json(self._doc()), self._named)

    def _named(self) -> list[tuple[str, Any]]:
        """The values a body is made of, named as errors name them."""
        return [*((f"positional argument {i}", v) for i, v in enumerate(self.args)),
                *((f"keyword argument {k!r}", v) for k, v in self.kwargs.items()),
                *((f"the name of keyword argument {printable(k)!r}", k) for k in self.kwargs),
                ("the task name", self.task), ("the queue", self.queue),
                ("the headers", self.headers), ("the workflow", [self.chain, self.chord,
                                                                 self.callbacks, self.errbacks])]

    def _doc(self) -> dict[str, Any]:
        """The wire document: fields in declaration order, those at their default left out.

        Written field by field (not ``dataclasses.asdict``, which deep-copies
        every argument and crashes on sockets or locks before we can name them;
        not a loop comparing all 22 fields with their defaults, which cost
        more than the JSON encoding): sending thousands of messages is a hot path.
        """
        content_type = self.content_type
        doc: dict[str, Any] = {"id": self.id, "task": self.task}
        if self.args or content_type != JSON:
            doc["args"] = _encode_args(self.args, content_type)
        if self.kwargs or content_type != JSON:
            doc["kwargs"] = _encode_kwargs(self.kwargs, content_type)
        doc["queue"] = self.queue
        if self.priority:
            doc["priority"] = self.priority
        if self.retries:
            doc["retries"] = self.retries
        if self.eta is not None:
            doc["eta"] = self.eta
        if self.expires is not None:
            doc["expires"] = self.expires
        doc["created"] = self.created
        self._add_workflow(doc)
        if self.headers:
            doc["headers"] = to_jsonable(self.headers, "headers")
        if content_type != JSON:
            doc["content_type"] = content_type
        doc["v"] = self.v
        return doc

    def _add_workflow(self, doc: dict[str, Any]) -> None:
        """The workflow fields, which most messages (a plain ``.delay()``) lack."""
        if self.root_id is not None:
            doc["root_id"] = self.root_id
        if self.parent_id is not None:
            doc["parent_id"] = self.parent_id
        if self.group_id is not None:
            doc["group_id"] = self.group_id
        if self.group_index is not None:
            doc["group_index"] = self.group_index
        if self.chord:
            doc["chord"] = self.chord
        if self.chain:
            doc["chain"] = list(self.chain)
        if self.callbacks:
            doc["callbacks"] = list(self.callbacks)
        if self.errbacks:
            doc["errbacks"] = list(self.errbacks)

    @classmethod
    def decode(cls, body: bytes, accept_content: list[str]) -> Message:
        """Parse a body; :class:`MessageDecodeError` says what was wrong with it."""
        doc = _parse(body)
        version = doc.get("v", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise MessageDecodeError(f"unsupported message version {version!r}")
        if type(doc.get("id")) is not str or type(doc.get("task")) is not str:
            for required in ("id", "task"):
                if not isinstance(doc.get(required), str):
                    raise MessageDecodeError(f"message has no string field {required!r}")
        content_type = doc.get("content_type", JSON)
        if not isinstance(content_type, str):
            raise MessageDecodeError("message field 'content_type' must be a string")
        check_accepted_once(content_type, accept_content)
        return cls._from_doc(doc, content_type)

    @classmethod
    def _from_doc(cls, doc: dict[str, Any], content_type: str) -> Message:
        """The message of a parsed body (``doc``, which this takes over).

        Arguments of plain JSON values (the usual call) are taken as parsed:
        decoding them would return them unchanged.  Keys that are not fields
        are ignored; the workflow fields and headers are converted only when
        present (their defaults need nothing).
        """
        try:
            args = doc.pop("args", [])
            kwargs = doc.pop("kwargs", {})
            if content_type != JSON or type(args) is not list or not _plain_values(args):
                args = decode_payload(args, content_type)
            if (content_type != JSON or type(kwargs) is not dict or TAG in kwargs
                    or not _plain_values(kwargs.values())):
                kwargs = decode_payload(kwargs, content_type)
            if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
                raise MessageDecodeError("message args must be a list and kwargs an object")
            for name in _SEQUENCES:
                if name in doc:
                    doc[name] = tuple(doc[name])
            if "headers" in doc:
                doc["headers"] = decode_payload(doc["headers"], JSON)
            check_fields(doc)
            doc["args"] = tuple(args)
            doc["kwargs"] = kwargs if type(kwargs) is dict else dict(kwargs)
            return _make_message(doc)
        except MessageDecodeError:
            raise
        except Exception as exc:  # hostile input: any failure to decode is the body's fault
            raise MessageDecodeError(f"malformed message fields: {exc!r}"[:500]) from exc


quick_init(Message)
_FIELD_ORDER = tuple(Message.__dataclass_fields__)
_FIELDS = frozenset(_FIELD_ORDER)
_make_message = from_mapping(Message)
_SEQUENCES = ("chain", "callbacks", "errbacks")


def _plain_values(values: Any) -> bool:
    """Are these JSON values all scalars (which decoding returns unchanged)?

    A loop, not ``all()`` over a generator: a third of the time for the
    one or two arguments of a usual call."""
    plain = JSON_SCALARS
    for value in values:  # noqa: SIM110
        if type(value) not in plain:
            return False
    return True


class BodyTemplate:
    """Bodies of many calls of one task that share everything but id, arguments and time.

    A batch send (:meth:`Conveyor.send_many`, or the members of a group or
    chord header, see :mod:`conveyor._batching`) encodes the shared fields
    once and splices each call's id, ``args``, ``kwargs`` and ``created`` in,
    plus the member's ``group_index`` and the ``index`` in its ``chord``
    scope when the prototype has them.  That gives the same bytes as
    :meth:`Message.encode` of the same message at a fraction of the cost (no
    ``Message`` object, no per-field checks, the workflow fields encoded once).
    """

    def __init__(self, prototype: Message) -> None:
        self.prototype = prototype
        doc = prototype.evolve(args=(), kwargs={})._doc()
        keys = list(doc)
        created = keys.index("created")
        self._head = ',"task":' + dumps_json(prototype.task)
        shared = [key for key in keys[2:created] if key not in ("args", "kwargs")]
        self._middle = "," + _members(doc, shared) + ',"created":'
        self._tail, self._slots = _spliced_tail(doc, keys[created + 1:])
        self._typed = prototype.content_type != JSON

    def body(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             created: float, group_index: int | None = None,
             chord_index: int | None = None) -> bytes:
        """The encoded message for one call; raises naming an argument that cannot travel.

        ``group_index`` and ``chord_index`` replace the prototype's (both
        must be given when the prototype has them).
        """
        content_type = self.prototype.content_type
        if _PLAIN_TEXT(task_id):
            text = '{"id":"' + task_id + '"' + self._head
        else:
            text = '{"id":' + dumps_json(task_id) + self._head
        if args or self._typed:
            text += ',"args":' + dumps_json(_encode_args(args, content_type))
        if kwargs or self._typed:
            text += ',"kwargs":' + dumps_json(_encode_kwargs(kwargs, content_type))
        text += self._middle + repr(created)
        tail = self._tail
        if self._slots:
            text += _splice(tail, self._slots, group_index, chord_index)
        else:
            text += tail[0]
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # names the argument (utf8 raises)
            return utf8(text, lambda: self.prototype.evolve(
                id=task_id, args=args, kwargs=kwargs)._named())


def _splice(pieces: list[str], slots: list[str], group_index: int | None,
            chord_index: int | None) -> str:
    if len(slots) == 1 and (index := group_index if slots[0] == _GROUP_SLOT
                            else chord_index) is not None:
        return pieces[0] + str(index) + pieces[1]  # a plain group's member: the usual case
    parts = [pieces[0]]
    for slot, text in zip(slots, pieces[1:], strict=True):
        index = group_index if slot == _GROUP_SLOT else chord_index
        if index is None:
            raise ValueError("this template needs the member's group and chord index")
        parts += [str(index), text]
    return "".join(parts)


_GROUP_SLOT, _CHORD_SLOT = "g", "c"
# Text JSON writes as it is between quotes (ids: hex digits and dashes).
_PLAIN_TEXT = re.compile(r"[0-9A-Za-z_.:~-]*\Z").match


def _spliced_tail(doc: dict[str, Any], keys: list[str]) -> tuple[list[str], list[str]]:
    """The encoded fields after ``created``, cut where the member's indexes go.

    Returns the text pieces and, for each cut, which index fills it.  The
    indexes are replaced by marker strings no value can contain (random per
    template), encoded, and the text split on the encoded markers.
    """
    mark = f"\x00splice-{os.urandom(8).hex()}-"
    doc = dict(doc)
    if doc.get("group_index") is not None:
        doc["group_index"] = mark + _GROUP_SLOT
    chord = doc.get("chord")
    if isinstance(chord, dict) and chord.get("index") is not None:
        doc["chord"] = {**chord, "index": mark + _CHORD_SLOT}
    tail = "," + _members(doc, keys) + "}"
    quoted = {dumps_json(mark + slot): slot for slot in (_GROUP_SLOT, _CHORD_SLOT)}
    pieces, slots = [tail], []
    for marker, slot in quoted.items():
        before, found, after = pieces[-1].partition(marker)
        if found:
            pieces[-1:] = [before, after]
            slots.append(slot)
    return pieces, slots


def _members(doc: dict[str, Any], keys: list[str]) -> str:
    """``"k":v,...`` for ``keys`` of ``doc``: a JSON object's inside, without braces."""
    return dumps_json({key: doc[key] for key in keys})[1:-1]


def _encode_kwargs(kwargs: dict[str, Any], content_type: str) -> Any:
    if content_type != JSON:
        return encode_payload(kwargs, content_type, "kwargs")
    plain = JSON_SCALARS
    encoded = {
        key: value if type(value) in plain
        else encode_payload(value, content_type, f"keyword argument {key!r}")
        for key, value in kwargs.items()
    }
    # A keyword argument named like the tag key would read back as a tagged
    # value: wrapped, as to_jsonable wraps any such dict, it round-trips.
    return {TAG: "dict", "v": encoded} if TAG in encoded else encoded


def _encode_args(args: tuple[Any, ...], content_type: str) -> Any:
    if content_type != JSON:
        return encode_payload(list(args), content_type, "args")
    plain = JSON_SCALARS
    return [
        value if type(value) in plain
        else encode_payload(value, content_type, f"positional argument {index}")
        for index, value in enumerate(args)
    ]


def _parse(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageDecodeError(f"body is not UTF-8: {exc}") from exc
    try:
        doc = loads_json(text)
    except json.JSONDecodeError as exc:
        raise MessageDecodeError(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise MessageDecodeError("body is nested too deeply to decode") from exc
    except ValueError as exc:  # e.g. an integer longer than int_max_str_digits
        raise MessageDecodeError(f"body is not usable JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MessageDecodeError(f"body is a JSON {type(doc).__name__}, not an object")
    return doc


# -- times given by callers -------------------------------------------------------

def eta_timestamp(eta: Any, countdown: Any, enable_utc: bool = True,
                  zone: str = "UTC") -> float | None:
    """The Unix time an ``eta``/``countdown`` means (None: run now).

    ``eta`` may be a datetime, an ISO 8601 string or a Unix time.  A naive
    datetime is read as Celery reads it: UTC under ``enable_utc`` (the
    default), else in the ``timezone`` setting's zone.
    """
    if eta is not None and countdown is not None:
        raise ValueError("pass either eta or countdown, not both")
    if countdown is not None:
        return time.time() + float(countdown)
    if eta is None:
        return None
    return moment_timestamp(eta, "eta", enable_utc, zone)


def expires_timestamp(value: Any, enable_utc: bool = True, zone: str = "UTC") -> float | None:
    """The Unix time ``expires`` means: seconds from now, or a moment read as ``eta`` is."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return time.time() + float(value)
    return moment_timestamp(value, "expires", enable_utc, zone)


def moment_timestamp(value: Any, what: str, enable_utc: bool, zone: str) -> float:
    """A datetime, ISO 8601 text or Unix time as a Unix time; naive reads as Celery does."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not an ISO 8601 date and time") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=naive_zone(enable_utc, zone))
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a datetime, ISO 8601 text or Unix time, got {value!r}")
    return float(value)


def naive_zone(enable_utc: bool, zone: str) -> tzinfo:
    """The zone a naive datetime is in: UTC with ``enable_utc``, else ``timezone``."""
    if enable_utc:
        return timezone.utc
    from zoneinfo import ZoneInfo  # imported when needed: ~0.3 MiB in every process

    return ZoneInfo(zone)


# -- envelope field checks (a body written straight into the broker skipped .delay()) --
_BOUND = 2**31  # retries, priority, group_index, max_deliveries: far above any real value
_MAX_TEXT = 1000  # ids and names become store keys


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= _MAX_TEXT and (
        value.isascii() or _utf8(value))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _finite(value: Any) -> bool:
    # Unix times and seconds; far wider than any real one, and false for NaN.
    return (type(value) is float or type(value) is int) and -1e11 < value < 1e11


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value < _BOUND


def _objects(value: Any) -> bool:
    return all(isinstance(item, dict) for item in value)


def _headers(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for name in ("time_limit", "soft_time_limit"):
        limit = value.get(name)
        if limit is not None and not (_finite(limit) and limit >= 0):
            raise MessageDecodeError(f"message header {name!r} must be a number of seconds")
    deliveries = value.get("max_deliveries")
    if deliveries is not None and not (_count(deliveries) and deliveries > 0):
        raise MessageDecodeError("message header 'max_deliveries' must be a positive integer")
    return True


_TEXT_RULE = f"well-formed text of at most {_MAX_TEXT} characters"
_COUNT_RULE = f"an integer from 0 to {_BOUND - 1}"
#: field -> (check, accepts None, what it must be)
_CHECKS: dict[str, tuple[Any, bool, str]] = {
    "id": (_text, False, _TEXT_RULE), "task": (_text, False, _TEXT_RULE),
    "queue": (_text, False, _TEXT_RULE), "root_id": (_text, True, _TEXT_RULE),
    "parent_id": (_text, True, _TEXT_RULE), "group_id": (_text, True, _TEXT_RULE),
    "created": (_finite, False, "a finite number"), "eta": (_finite, True, "a finite number"),
    "expires": (_finite, True, "a finite number"), "priority": (_count, False, _COUNT_RULE),
    "retries": (_count, False, _COUNT_RULE), "group_index": (_count, True, _COUNT_RULE),
    "chord": (lambda v: isinstance(v, dict), True, "an object"),
    "chain": (_objects, False, "a list of objects"),
    "callbacks": (_objects, False, "a list of objects"),
    "errbacks": (_objects, False, "a list of objects"),
    "headers": (_headers, False, "an object"),
}


def check_fields(fields: dict[str, Any]) -> None:
    """Refuse envelope fields of the wrong type or out of range, naming the field.

    Without this a hostile body (``"retries": 10**4000``, ``"eta": "soon"``)
    would fail deep inside the worker, or make it compute ``2 ** retries``.
    Only the fields present are looked at (a plain call has five).
    """
    for name, value in fields.items():
        rule = _CHECKS.get(name)
        if rule is None or (value is None and rule[1]):
            continue
        if not rule[0](value):
            raise MessageDecodeError(f"message field {name!r} must be {rule[2]}")
