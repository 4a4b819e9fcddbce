"""Encoding task arguments and results.

JSON is the default and the only format accepted unless the user opts in to
pickle.  A handful of common Python types (datetime, date, time, timedelta,
Decimal, UUID, bytes, tuple, set) travel as tagged objects ``{"__t": name,
"v": value}`` so they come back as the same type.  Anything else fails at
``.delay()`` time with an error naming the argument, because a model instance
that silently turns into a string would be found much later, by a user.
"""

from __future__ import annotations

import base64
import functools
import json
import pickle
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any

from conveyor.exceptions import ContentDisallowed, SerializationError

JSON = "application/json"
PICKLE = "application/x-python-serialize"
CONTENT_TYPES = {"json": JSON, "pickle": PICKLE}
TAG = "__t"
#: Types JSON carries as they are: :func:`to_jsonable` returns them unchanged.
JSON_SCALARS = frozenset({str, int, float, bool, type(None)})

_Encoder = Callable[[Any], Any]
_Decoder = Callable[[Any], Any]

_ENCODERS: list[tuple[type, str, _Encoder]] = [
    (datetime, "datetime", lambda v: v.isoformat()),
    (date, "date", lambda v: v.isoformat()),
    (time, "time", lambda v: v.isoformat()),
    (timedelta, "timedelta", lambda v: v.total_seconds()),
    (uuid.UUID, "uuid", str),
    (bytes, "bytes", lambda v: base64.b64encode(v).decode("ascii")),
    (set, "set", list),
    (frozenset, "set", list),
]

def _decimal(text: str) -> Any:
    """A tagged Decimal back; ``decimal`` (0.4 MiB) is imported only for one."""
    from decimal import Decimal

    return Decimal(text)


_DECODERS: dict[str, _Decoder] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "timedelta": lambda v: timedelta(seconds=v),
    "decimal": _decimal,
    "uuid": uuid.UUID,
    "bytes": base64.b64decode,
    "set": set,
    "tuple": tuple,
}


def printable(text: str, limit: int = 2000) -> str:
    """``text`` cut to ``limit`` characters, lone surrogates written as ``\\udXXX``.

    For reasons and names that come from a message body (a hostile body may
    hold ``"\\ud800"``, which no UTF-8 store, log or page can carry).
    """
    text = text[:limit]
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def content_type_for(name: str) -> str:
    """Map a serializer name ("json", "pickle") or MIME type to the MIME type."""
    if name in CONTENT_TYPES:
        return CONTENT_TYPES[name]
    if name in CONTENT_TYPES.values():
        return name
    raise SerializationError(
        f"unknown serializer {name!r}; choose one of {sorted(CONTENT_TYPES)}"
    )


def check_accepted(content_type: str, accept_content: list[str]) -> None:
    """Refuse content types the app has not opted in to (pickle runs code)."""
    accepted = {content_type_for(name) for name in accept_content}
    if content_type not in accepted:
        raise ContentDisallowed(
            f"refusing content type {content_type!r}: accept_content allows only "
            f"{sorted(accepted)}"
        )


@functools.lru_cache(maxsize=64)
def _accepted(content_type: str, accept_content: tuple[str, ...]) -> None:
    check_accepted(content_type, list(accept_content))


def check_accepted_once(content_type: str, accept_content: Sequence[str]) -> None:
    """:func:`check_accepted`, worked out once per content type and setting: every
    message a worker takes and every result a client reads passes here.  A
    refusal is an exception, which is not kept, so it is raised every time."""
    _accepted(content_type, tuple(accept_content))


def _tagged(value: Any) -> Any:
    for kind, tag, encode in _ENCODERS:
        if isinstance(value, kind):
            return {TAG: tag, "v": encode(value)}
    # A Decimal exists only once its module was imported: a process that never
    # sees one (most workers) does not load ``decimal`` for this check.
    decimal = sys.modules.get("decimal")
    if decimal is not None and isinstance(value, decimal.Decimal):
        return {TAG: "decimal", "v": str(value)}
    return None


def to_jsonable(value: Any, where: str) -> Any:
    """Turn ``value`` into plain JSON types, naming ``where`` when it cannot."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, list):
        return [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple):
        items = [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return {TAG: "tuple", "v": items}
    if isinstance(value, dict):
        return _dict_to_jsonable(value, where)
    tagged = _tagged(value)
    if tagged is not None:
        if tagged[TAG] == "set":
            tagged["v"] = [to_jsonable(item, f"{where}{{}}") for item in tagged["v"]]
        return tagged
    raise SerializationError(_unserializable_message(value, where))


def _dict_to_jsonable(value: dict[Any, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise SerializationError(
                f"{where} has a key {key!r} of type {type(key).__name__}; "
                "JSON objects only have string keys"
            )
        out[key] = to_jsonable(item, f"{where}[{key!r}]")
    if TAG in out:
        # A user dict that happens to use our tag key is wrapped so it round-trips.
        return {TAG: "dict", "v": out}
    return out


def _unserializable_message(value: Any, where: str) -> str:
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    hint = "pass a plain value instead"
    if hasattr(value, "pk") or hasattr(value, "_meta"):
        hint = "pass its primary key (e.g. obj.pk) and load it inside the task"
    elif hasattr(value, "id"):
        hint = "pass its id and load it inside the task"
    return f"{where} is a {name} instance, which cannot be serialized to JSON; {hint}"


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable`."""
    if isinstance(value, list):
        return [from_jsonable(item) for item in value]
    if isinstance(value, dict):
        tag = value.get(TAG)
        if tag is None:
            return {key: from_jsonable(item) for key, item in value.items()}
        if tag == "dict":
            return {key: from_jsonable(item) for key, item in value["v"].items()}
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise SerializationError(f"unknown tagged value {tag!r} in message")
        inner = value["v"]
        if isinstance(inner, list):
            inner = [from_jsonable(item) for item in inner]
        return decoder(inner)
    return value


def _compact_encoder() -> Callable[[Any, int], Any]:
    """json's C encoder, made once for the process.

    ``json.dumps`` with options builds a ``JSONEncoder`` and a C encoder per
    call, which is two thirds of the cost of encoding a small message.  No
    circular-reference markers: everything encoded here has been through
    :func:`to_jsonable` (or is a signature's plain dict), and C recursion is
    bounded anyway (``RecursionError``).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        slow = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
        return lambda value, _level: slow.iterencode(value, _one_shot=True)
    return make(None, _no_default, json.encoder.encode_basestring, None, ":", ",",
                False, False, True)


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_COMPACT = _compact_encoder()


def dumps_json(value: Any) -> str:
    """Compact JSON text; callers have already made ``value`` jsonable."""
    return "".join(_COMPACT(value, 0))


# json.loads's own decoder settings (no hooks); scan_once is set in its __init__.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads_json(text: str) -> Any:
    """``json.loads(text)``: the same value, or the same exception, sooner.

    ``json.loads`` runs a regular expression before the scanner (leading
    whitespace) and one after it (trailing whitespace), and two Python calls
    around them: ~1 µs of the ~2 µs a message body takes.  A document
    Conveyor wrote has no whitespace around it, so the scanner is called
    directly, and ``json.loads`` runs only when the scanner did not start at
    the first character or stopped before the last (whitespace, or an error
    for it to raise as it always has).
    """
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value


def utf8(text: str, named: Callable[[], Iterable[tuple[str, Any]]]) -> bytes:
    """``text`` (JSON made from the ``named`` values) as UTF-8, or an error naming
    the value that holds a lone surrogate (``"\\ud800"``), which UTF-8 cannot carry.

    Checked only when encoding fails, so sending pays nothing for it.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        for where, value in named():
            found = surrogate_in(value, where)
            if found is not None:
                raise SerializationError(
                    f"{found} holds a lone surrogate, which UTF-8 (and so no broker or "
                    "result store) can carry; pass well-formed text (e.g. decode bytes "
                    "with errors='replace')") from None
        raise SerializationError("the message holds a lone surrogate, which UTF-8 "
                                 "cannot carry") from None


def surrogate_in(value: Any, where: str, depth: int = 0) -> str | None:
    """Where in ``value`` a string with a lone surrogate is, or None."""
    if isinstance(value, str):
        return None if _encodes(value) else where
    if depth > 100:
        return None
    items: list[tuple[str, Any]]
    if isinstance(value, (list, tuple)):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = []
        for key, item in value.items():
            name = printable(str(key))
            items += [(f"{where}, the key {name!r},", key), (f"{where}[{name!r}]", item)]
    else:
        return None
    for path, item in items:
        found = surrogate_in(item, path, depth + 1)
        if found is not None:
            return found
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_payload(value: Any, content_type: str, where: str) -> Any:
    """Encode a value for a message or result according to its content type."""
    if content_type == PICKLE:
        try:
            return base64.b64encode(pickle.dumps(value)).decode("ascii")
        except Exception as exc:
            raise SerializationError(f"{where} cannot be pickled: {exc}") from exc
    try:
        return to_jsonable(value, where)
    except RecursionError:
        raise SerializationError(f"{where} is nested too deeply to serialize (a few hundred "
                                 "levels at most)") from None


def decode_payload(value: Any, content_type: str) -> Any:
    """Inverse of :func:`encode_payload`; the caller has checked ``accept_content``."""
    if content_type == PICKLE:
        return pickle.loads(base64.b64decode(value))
    return from_jsonable(value)
