"""The quick reading paths (ADR 0040) give what the plain ones gave."""

from __future__ import annotations

import dataclasses
import inspect
import json
import pickle
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from conveyor._frozen import from_mapping, quick_init
from conveyor._message import BodyTemplate, Message, MessageDecodeError
from conveyor._serialization import loads_json
from conveyor.resultstores.record import ResultRecord


@pytest.mark.parametrize("text", [
    '{"a":1}', ' {"a":1}', '{"a":1} ', '{"a":1}\n', '[1,2]', '"x"', "1.5", "NaN",
    '{"a":1}x', "", " ", "{", '{"a":}', "\ufeff{}", '{"a":1}{"b":2}', "[" * 100_000,
    '{"a":"\\ud800"}', "1" * 5000,
])
def test_loads_json_answers_as_json_loads(text: str) -> None:
    def outcome(load: Any) -> Any:
        try:
            value = load(text)
        except Exception as exc:  # the same type and text is the point
            return type(exc), str(exc)
        return "ok", value if value == value else "nan"

    assert outcome(loads_json) == outcome(json.loads)


def test_quick_init_keeps_the_dataclass_behaviour() -> None:
    first = Message(id="a", task="t")
    second = Message("a", "t")
    assert first.kwargs == {} and first.kwargs is not second.kwargs  # a fresh factory value
    assert first.headers is not second.headers
    assert first.created > 0 and first.queue == "default" and first.args == ()
    assert first == dataclasses.replace(second, created=first.created)
    assert pickle.loads(pickle.dumps(first)) == first
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.id = "b"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Message(id="a")  # type: ignore[call-arg]
    assert "kwargs: 'dict[str, Any]' = <factory>" in str(inspect.signature(Message))
    record = ResultRecord("id", "SUCCESS", 3)
    assert (record.result, record.children, record.retries) == (3, [], 0)


def test_a_class_quick_init_does_not_cover_keeps_its_init() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    original = NoSlots.__init__
    assert quick_init(NoSlots).__init__ is original
    with pytest.raises(TypeError):
        from_mapping(NoSlots)


def test_from_mapping_reads_as_cls_of_the_known_keys() -> None:
    make = from_mapping(ResultRecord)
    doc = {"task_id": "x", "state": "SUCCESS", "result": [1], "unknown": 5, "retries": 2}
    assert make(doc) == ResultRecord(task_id="x", state="SUCCESS", result=[1], retries=2)
    assert make({"task_id": "x", "state": "S"}).children == []
    with pytest.raises(TypeError):
        make({"task_id": "x"})


@pytest.mark.parametrize("args, kwargs", [
    ((), {}),
    ((7, "x", None, True, 1.5), {"a": 1, "b": "c"}),
    (([1, [2]], {"k": (1, 2)}), {"when": datetime(2026, 1, 2, tzinfo=timezone.utc)}),
    (((1, 2), {1, 2}, b"\x00"), {"d": Decimal("1.10")}),
    ((), {"nested": {"__t": "tuple", "v": [1]}}),
])
def test_decode_gives_back_what_was_encoded(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    message = Message(id="i", task="t", args=args, kwargs=kwargs, chain=({"task": "n"},),
                      headers={"h": 1}, group_index=3)
    decoded = Message.decode(message.encode(), ["json"])
    assert decoded == message
    assert type(decoded.chain) is tuple and type(decoded.args) is tuple


@pytest.mark.parametrize("body, reason", [
    (b'{"id":"i","task":"t","args":5}', "args must be a list"),
    (b'{"id":"i","task":"t","kwargs":[1]}', "args must be a list"),
    (b'{"id":"i","task":"t","args":[{"__t":"nope","v":1}]}', "malformed"),
    (b'{"id":"i","task":"t","chain":5}', "malformed"),
    (b'{"id":"i","task":"t","chain":["x"]}', "'chain' must be"),
    (b'{"id":"i","task":"t","retries":-1}', "'retries' must be"),
    (b'{"id":"i","task":"t","headers":[1]}', "'headers' must be"),
    (b'{"id":1,"task":"t"}', "no string field 'id'"),
    (b'{"id":"i"}', "no string field 'task'"),
    (b' {"id":"i","task":"t","created":"x"} ', "'created' must be"),
])
def test_hostile_bodies_are_refused_as_before(body: bytes, reason: str) -> None:
    with pytest.raises(MessageDecodeError, match=reason):
        Message.decode(body, ["json"])


def test_unknown_fields_are_ignored() -> None:
    decoded = Message.decode(b'{"id":"i","task":"t","later":1,"created":1.0}', ["json"])
    assert decoded == Message(id="i", task="t", created=1.0)


@pytest.mark.parametrize("kwargs", [
    {"__t": 5}, {"__t": "tuple", "v": [1]}, {"__t": "x", "n": (1, 2)},
])
def test_a_keyword_argument_named_like_the_tag_key_round_trips(kwargs: dict[str, Any]) -> None:
    """Keyword arguments are a dict like any other: one named ``__t`` (the key
    Conveyor tags typed values with) is wrapped on the way out, as a nested
    dict is, instead of reading back as a tagged value or a refusal."""
    message = Message(id="i", task="t", kwargs=kwargs)
    assert Message.decode(message.encode(), ["json"]).kwargs == kwargs
    template = BodyTemplate(Message(id="p", task="t"))
    body = template.body("j", (), kwargs, 1.0)
    assert Message.decode(body, ["json"]).kwargs == kwargs
