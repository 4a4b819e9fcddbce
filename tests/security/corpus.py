"""Hostile message bodies, written straight into a broker (no ``.delay()`` checks).

Each family is what a careless or hostile writer with broker access could
put in a queue: nesting deeper than any parser's recursion limit, numbers
no float holds, NaN and Infinity tokens, lone surrogates, every envelope
field with every wrong type, truncated JSON, huge strings, unknown or
refused content types, tagged values that do not decode, and a seeded
mutation of a valid call (bytes flipped, tokens spliced in, slices cut).  None may take
down a worker process or thread (guarantee 9).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

from conveyor.brokers import Envelope

APP = "tests.security.hostile_app"
ECHO, PING = f"{APP}.echo", f"{APP}.ping"
FIELDS = ("id", "task", "args", "kwargs", "queue", "priority", "retries", "eta", "expires",
          "created", "root_id", "parent_id", "group_id", "group_index", "chord", "chain",
          "callbacks", "errbacks", "headers", "content_type", "v")
WRONG: tuple[Any, ...] = (None, True, -1, 2**70, 1.5, "x", "", [], {}, [1, "a"], {"a": [1]},
                          "\ud800", -1e308)
TAGGED: tuple[Any, ...] = (
    {"__t": "datetime", "v": "not a date"}, {"__t": "timedelta", "v": 1e308},
    {"__t": "decimal", "v": "x"}, {"__t": "bytes", "v": "!!!"}, {"__t": "nope", "v": 1},
    {"__t": "set", "v": 5}, {"__t": "tuple"}, {"__t": "dict", "v": 3}, {"__t": "uuid", "v": []},
)
NONFINITE = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")


def doc(task: str = ECHO, **fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "task": task, "args": [], "kwargs": {},
            "queue": "default", "created": 1.7e9, "v": 1, **fields}


def dump(value: Any) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: lone surrogates travel as \\ud800


def deep(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def _nesting() -> Iterator[bytes]:
    for depth in (1_000, 5_000, 100_000):
        yield deep(depth).encode()
        yield (f'{{"id": "{uuid.uuid4()}", "task": "{ECHO}", "args": [{deep(depth)}]}}'
               ).encode()
        yield f'{{"id": "x", "task": {deep(depth)}, "v": 1}}'.encode()
        yield (f'{{"id": "{uuid.uuid4()}", "task": "{ECHO}", "kwargs": {{"a": '
               + '{"a": ' * depth + "1" + "}" * depth + "}}").encode()
    for depth in (400, 990):  # parses, then nests deep in the decoded value
        yield (f'{{"id": "{uuid.uuid4()}", "task": "{ECHO}", "args": [{deep(depth)}]}}'
               ).encode()
        yield (f'{{"id": "{uuid.uuid4()}", "task": "{ECHO}", "args": ['
               + '{"__t": "tuple", "v": [' * depth + "]}" * depth + "]}").encode()


def _numbers() -> Iterator[bytes]:
    big = "9" * 4_200  # just under int_max_str_digits
    huge = "9" * 5_000  # above it
    for token in (*NONFINITE, big, huge, "1e-999", "-0"):
        for field in ("retries", "priority", "eta", "expires", "created", "group_index", "v"):
            body = dump(doc(**{field: 0}))
            yield body.replace(f'"{field}": 0'.encode(), f'"{field}": {token}'.encode())
        yield dump(doc()).replace(b'"args": []', f'"args": [{token}]'.encode())
        yield dump(doc(headers={"time_limit": 0})).replace(b'"time_limit": 0',
                                                           f'"time_limit": {token}'.encode())
        yield dump(doc(headers={"max_deliveries": 0})).replace(
            b'"max_deliveries": 0', f'"max_deliveries": {token}'.encode())


def _surrogates() -> Iterator[bytes]:
    for field in ("id", "task", "queue", "root_id", "parent_id", "group_id", "content_type"):
        yield dump(doc(**{field: "\ud800"}))
    yield dump(doc(args=["\ud800", "ok", "\udfff\ud800"]))
    yield dump(doc(kwargs={"\ud800": 1}))
    yield dump(doc(task="unknown.\udc00"))
    yield dump(doc(headers={"\ud800": "\ud800"}))
    yield b'{"id": "z", "task": "\xed\xa0\x80"}'  # a surrogate encoded as (invalid) UTF-8


def _wrong_types() -> Iterator[bytes]:
    for field in FIELDS:
        for value in WRONG:
            yield dump(doc(**{field: value}))
        body = doc()
        body.pop(field, None)
        yield dump(body)
    for value in TAGGED:
        yield dump(doc(args=[value]))
        yield dump(doc(kwargs={"a": value}))
        yield dump(doc(headers=value))
    yield dump(doc(chain=[{"task": ECHO, "args": "not a list"}]))
    yield dump(doc(callbacks=[{"task": None}], errbacks=[{"task": 5}]))
    yield dump(doc(chord={"task": ECHO, "options": "x"}, group_id="g", group_index=0))


def _truncated() -> Iterator[bytes]:
    whole = dump(doc(args=[1, "two", {"three": [3.0]}], headers={"a": "b"}))
    for cut in range(0, len(whole), 3):
        yield whole[:cut]


def _odd_bytes() -> Iterator[bytes]:
    yield from (b"", b" ", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf{}", b"null", b"[]", b'"s"',
                b"1e999", b"NaN", b"{}", b'{"id": 1, "task": 2}')
    yield dump(doc(args=["x" * (2 * 1024 * 1024)]))  # a huge string
    yield dump(doc(kwargs={f"k{i}": i for i in range(20_000)}))  # a wide object
    for content_type in ("application/x-python-serialize", "application/x-yaml", "text/plain"):
        yield dump(doc(content_type=content_type, args="gASVAAAAAAAAAAA="))


TOKENS = (b"NaN", b"-Infinity", b"1e999", b"null", b"[]", b"{}", b'"\\ud800"', b"[[[[[[",
          b"]]]", b'"', b",", b":", b"\\", b"\xff", b"9" * 40, b'{"__t": "x"}', b"true")


def _mutations(count: int = 400, seed: int = 15) -> Iterator[bytes]:
    """Valid calls with random bytes flipped, tokens spliced in and slices cut out."""
    rng = random.Random(seed)  # fixed: the same corpus every run
    base = dump(doc(args=[1, "two", [3.0, None]], kwargs={"k": {"v": True}},
                    headers={"time_limit": 5}, retries=1, eta=1.7e9, priority=3))
    for _ in range(count):
        body = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(body))
            kind = rng.randrange(3)
            if kind == 0:
                body[at] = rng.randrange(256)
            elif kind == 1:
                body[at:at] = rng.choice(TOKENS)
            else:
                del body[at:at + rng.randint(1, 12)]
        yield bytes(body)


FAMILIES = (_nesting, _numbers, _surrogates, _wrong_types, _truncated, _odd_bytes, _mutations)


def bodies() -> list[bytes]:
    """Every hostile body, in a fixed order."""
    return [body for family in FAMILIES for body in family()]


def envelopes(queue: str = "default") -> list[Envelope]:
    return [Envelope(id=f"hostile-{i}", queue=queue, body=body)
            for i, body in enumerate(bodies())]
