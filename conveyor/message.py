"""The message envelope: one immutable, versioned JSON document per task call.

The wire format is documented in ``docs/protocol.md``.  Brokers never look
inside a body; they move bytes and the few routing fields they are handed
alongside (id, queue, priority, eta).  That keeps a malformed body from
breaking a broker: the worker decodes, and dead-letters what it cannot.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from conveyor.exceptions import SerializationError
from conveyor.serialization import (
    JSON,
    check_accepted,
    decode_payload,
    dumps_json,
    encode_payload,
    to_jsonable,
)

PROTOCOL_VERSION = 1

SignatureDict = dict[str, Any]


def new_id() -> str:
    """A fresh task id (UUID4 text, like Celery's)."""
    return str(uuid.uuid4())


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
        # Not dataclasses.asdict: it deep-copies every argument, which is slow on the
        # hot path and crashes on values (sockets, locks) before we can name them.
        doc = {name: getattr(self, name) for name in _FIELD_ORDER}
        doc["args"] = _encode_args(self.args, self.content_type)
        doc["kwargs"] = _encode_kwargs(self.kwargs, self.content_type)
        doc["headers"] = to_jsonable(self.headers, "headers")
        doc["chain"] = list(self.chain)
        doc["callbacks"] = list(self.callbacks)
        doc["errbacks"] = list(self.errbacks)
        return dumps_json(_drop_defaults(doc)).encode("utf-8")

    @classmethod
    def decode(cls, body: bytes, accept_content: list[str]) -> Message:
        """Parse a body; :class:`MessageDecodeError` says what was wrong with it."""
        doc = _parse(body)
        version = doc.get("v", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise MessageDecodeError(f"unsupported message version {version!r}")
        for required in ("id", "task"):
            if not isinstance(doc.get(required), str):
                raise MessageDecodeError(f"message has no string field {required!r}")
        content_type = doc.get("content_type", JSON)
        check_accepted(content_type, accept_content)
        return cls._from_doc(doc, content_type)

    @classmethod
    def _from_doc(cls, doc: dict[str, Any], content_type: str) -> Message:
        try:
            args = decode_payload(doc.get("args", []), content_type)
            kwargs = decode_payload(doc.get("kwargs", {}), content_type)
            if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
                raise MessageDecodeError("message args must be a list and kwargs an object")
            extra = {k: v for k, v in doc.items() if k in _FIELDS and k not in ("args", "kwargs")}
            extra["chain"] = tuple(extra.get("chain", ()))
            extra["callbacks"] = tuple(extra.get("callbacks", ()))
            extra["errbacks"] = tuple(extra.get("errbacks", ()))
            extra["headers"] = decode_payload(extra.get("headers", {}), JSON)
            return cls(args=tuple(args), kwargs=dict(kwargs), **extra)
        except (TypeError, ValueError) as exc:
            raise MessageDecodeError(f"malformed message fields: {exc}") from exc


_FIELD_ORDER = tuple(Message.__dataclass_fields__)
_FIELDS = frozenset(_FIELD_ORDER)
_DEFAULTS = {
    name: f.default
    for name, f in Message.__dataclass_fields__.items()
    if f.default is not None and not callable(f.default) and name not in ("v", "queue")
}


def _drop_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    """Leave out fields at their default so the common message stays small."""
    return {
        k: v
        for k, v in doc.items()
        if (v is not None and v != () and v != [] and v != {} and _DEFAULTS.get(k, _MISSING) != v)
        or k in ("id", "task", "v", "queue")
    }


_MISSING = object()


def _encode_kwargs(kwargs: dict[str, Any], content_type: str) -> Any:
    if content_type != JSON:
        return encode_payload(kwargs, content_type, "kwargs")
    return {
        key: encode_payload(value, content_type, f"keyword argument {key!r}")
        for key, value in kwargs.items()
    }


def _encode_args(args: tuple[Any, ...], content_type: str) -> Any:
    if content_type != JSON:
        return encode_payload(list(args), content_type, "args")
    return [
        encode_payload(value, content_type, f"positional argument {index}")
        for index, value in enumerate(args)
    ]


def _parse(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageDecodeError(f"body is not UTF-8: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MessageDecodeError(f"body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MessageDecodeError(f"body is a JSON {type(doc).__name__}, not an object")
    return doc
