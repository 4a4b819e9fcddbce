"""The fast send path keeps the wire format and the options path's answers.

The bodies below were produced by the encoder before it was rewritten for
speed (field-by-field instead of comparing every field with its default), so
a message from an older producer and one from this version are the same bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, signals
from conveyor._context import Request, pop_request, push_request
from conveyor._message import Message, new_id
from conveyor._routing import Routes
from conveyor._serialization import PICKLE
from conveyor.app import _split_call
from conveyor.exceptions import SerializationError

PLAIN_BODY = (
    b'{"id":"5f0c","task":"orders.process","queue":"default","created":1795472578.69,"v":1}'
)
FULL_BODY = (
    b'{"id":"5f0c","task":"orders.process","args":[42,{"__t":"tuple","v":[1,2]}],'
    b'"kwargs":{"n":1},"queue":"orders","priority":7,"retries":2,"eta":1795472600.5,'
    b'"expires":0.0,"created":1795472578.69,"root_id":"r","parent_id":"","group_id":"g",'
    b'"group_index":0,"chord":{"id":"c"},"chain":[{"task":"a"}],"callbacks":[{"task":"b"}],'
    b'"errbacks":[{"task":"e"}],"headers":{"time_limit":5},"v":1}'
)


def full_message() -> Message:
    return Message(
        id="5f0c", task="orders.process", args=(42, (1, 2)), kwargs={"n": 1}, queue="orders",
        priority=7, retries=2, eta=1795472600.5, expires=0.0, created=1795472578.69,
        root_id="r", parent_id="", group_id="g", group_index=0, chord={"id": "c"},
        chain=({"task": "a"},), callbacks=({"task": "b"},), errbacks=({"task": "e"},),
        headers={"time_limit": 5},
    )


def make_app(**settings: Any) -> Conveyor:
    return Conveyor("send-test", broker=f"memory://{uuid.uuid4().hex}", set_as_current=False,
                    **settings)


def test_plain_message_encodes_to_the_same_bytes_as_before() -> None:
    message = Message(id="5f0c", task="orders.process", created=1795472578.69)
    assert message.encode() == PLAIN_BODY


def test_every_field_set_encodes_to_the_same_bytes_as_before() -> None:
    assert full_message().encode() == FULL_BODY


@pytest.mark.parametrize("body", [PLAIN_BODY, FULL_BODY])
def test_bodies_from_the_earlier_encoder_decode_to_the_same_message(body: bytes) -> None:
    decoded = Message.decode(body, ["json"])
    assert decoded.encode() == body


def test_pickle_messages_always_carry_args_and_kwargs() -> None:
    message = Message(id="i", task="t", created=1.0, content_type=PICKLE)
    decoded = Message.decode(message.encode(), ["pickle"])
    assert (decoded.args, decoded.kwargs, decoded.content_type) == ((), {}, PICKLE)


def test_new_id_is_uuid4_text() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in list(ids)[:200]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def _comparable(message: Message) -> dict[str, Any]:
    """The document without what differs between two calls (id, times)."""
    doc = message._doc()
    del doc["id"], doc["created"]
    for relative in ("expires", "eta"):
        if relative in doc:
            doc[relative] = round(doc[relative] - message.created)
    return doc


def test_plain_build_matches_the_options_path() -> None:
    app = make_app(task_routes={"shop.*": {"queue": "shop", "priority": 3}},
                   task_serializer="json")

    @app.task(name="shop.pay", expires=60)
    def pay(n: int) -> int:
        return n

    @app.task(name="misc.log", queue="logs", priority=5)
    def log(text: str) -> str:
        return text

    for name, args in (("shop.pay", (1,)), ("misc.log", ("x",)), ("unknown.task", ())):
        plain = app.build_message(name, args, {"k": 1})
        # Any option (here an empty one) takes the general path.
        with_options = app.build_message(name, args, {"k": 1}, headers={})
        assert _comparable(plain) == _comparable(with_options), name
    assert _comparable(app.build_message("shop.pay", (1,)))["expires"] == 60
    assert app.build_message("shop.pay", (1,)).queue == "shop"
    assert app.build_message("misc.log", ("x",)).priority == 5


def test_pattern_routes_are_remembered_per_name_and_callables_are_asked_each_time() -> None:
    calls: list[tuple[Any, ...]] = []

    def by_argument(name: str, args: Any, kwargs: Any, options: Any) -> str:
        calls.append(tuple(args))
        return "big" if args and args[0] > 10 else "small"

    routes = Routes([by_argument])
    assert routes.route("t", (1,), {}, {}) == {"queue": "small"}
    assert routes.route("t", (99,), {}, {}) == {"queue": "big"}
    assert calls == [(1,), (99,)]
    patterns = Routes({"a.*": "qa"})
    first = patterns.route("a.x", (), {}, {})
    assert first == {"queue": "qa"} and patterns.route("a.x", (), {}, {}) is first
    assert patterns.route("b.x", (), {}, {}) == {}


def test_argument_check_sees_a_replaced_function() -> None:
    app = make_app()

    @app.task(name="t.add")
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="missing a required argument"):
        add.delay(1)
    add.delay(1, 2)  # fits: this shape of call is remembered as fitting
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        add.delay(1, 2, c=3)

    def one(a: int) -> int:
        return a

    add.fn = one
    add.delay(1)  # the new function takes one argument
    with pytest.raises(TypeError, match="too many positional arguments"):
        add.delay(1, 2)  # fitted the old function; the new one is asked again


# -- send_many ----------------------------------------------------------------

def _stored(app: Conveyor, queue: str = "default") -> list[Message]:
    deliveries = app.broker.reserve([queue], 10_000, lease=30, timeout=0)
    return [Message.decode(d.body, ["json", "pickle"]) for d in deliveries]


@pytest.mark.parametrize("options", [
    {},
    {"priority": 7, "countdown": 60, "expires": 300, "headers": {"trace": "x"}},
    {"serializer": "pickle", "queue": "other", "time_limit": 5, "link": None},
])
def test_send_many_bodies_are_what_encode_gives_for_the_same_message(
    options: dict[str, Any],
) -> None:
    app = make_app(accept_content=["json", "pickle"])
    calls: list[Any] = [(1, "a"), [2, (3, 4)], {"n": 5}, ()]
    ids, envelopes = app._batch("t.any", [_split_call(c) for c in calls], dict(options))
    assert len(set(ids)) == len(calls)
    for task_id, envelope, call in zip(ids, envelopes, calls, strict=True):
        sent = Message.decode(envelope.body, ["json", "pickle"])
        assert sent.id == task_id and envelope.id == task_id
        assert (sent.args, sent.kwargs) == _split_call(call)
        assert envelope.body == sent.encode()  # the bytes Message.encode writes
        assert (envelope.queue, envelope.priority, envelope.eta) == (
            sent.queue, app.broker_priority(sent), sent.eta)
    one = app.build_message("t.any", (1, "a"), {}, **options)
    first = Message.decode(envelopes[0].body, ["json", "pickle"])
    assert _comparable(first) == _comparable(one)


def test_send_many_sends_every_call_in_order() -> None:
    app = make_app()

    @app.task(name="t.add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    results = app.send_many("t.add", [(i,) for i in range(1500)] + [{"a": 1, "b": 2}])
    stored = _stored(app)
    assert [m.id for m in stored] == [r.id for r in results]
    assert [m.args for m in stored[:3]] == [(0,), (1,), (2,)]
    assert stored[-1].kwargs == {"a": 1, "b": 2}
    assert app.send_many("t.add", []) == []


def test_send_many_checks_every_call_before_sending_anything() -> None:
    app = make_app()

    @app.task(name="t.add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    with pytest.raises(TypeError, match="missing a required argument"):
        app.send_many("t.add", [(1,), (2, 3), ()])
    with pytest.raises(SerializationError, match="positional argument 0"):
        app.send_many("t.add", [(1,), (object(),)])
    with pytest.raises(TypeError, match=r"write \[\(x,\) for x in items\]"):
        app.send_many("t.add", [1, 2])
    with pytest.raises(TypeError, match="idempotency_key, task_id names one"):
        app.send_many("t.add", [(1,)], task_id="x", idempotency_key="k")
    assert _stored(app) == []


def test_send_many_refuses_a_message_above_the_size_limit() -> None:
    app = make_app(task_message_max_bytes=200)
    with pytest.raises(SerializationError, match="task_message_max_bytes=200"):
        app.send_many("t.any", [("small",), ("x" * 300,)])
    assert _stored(app) == []


def test_send_many_asks_a_callable_router_about_each_call() -> None:
    def by_size(name: str, args: Any, kwargs: Any, options: Any) -> str:
        return "big" if args[0] > 10 else "small"

    app = make_app(task_routes=[by_size])
    app.send_many("t.any", [(1,), (99,), (2,)])
    assert [m.args for m in _stored(app, "small")] == [(1,), (2,)]
    assert [m.args for m in _stored(app, "big")] == [(99,)]


def test_send_many_with_a_queue_still_takes_each_calls_priority_from_a_router() -> None:
    """A router's answer may carry a priority as well as a queue (Celery's
    routers return options); naming the queue does not make it per batch."""
    def urgent_first(name: str, args: Any, kwargs: Any, options: Any) -> dict[str, Any]:
        return {"priority": 9 if args[0] == "urgent" else 1}

    app = make_app(task_routes=[urgent_first])
    app.send_many("t.any", [("normal",), ("urgent",)], queue="work")
    assert {m.args[0]: m.priority for m in _stored(app, "work")} == {"normal": 1, "urgent": 9}


def test_send_many_inside_a_task_records_children_and_workflow_ids() -> None:
    app = make_app()
    parent = Request(id="parent-1", root_id="root-1")
    token = push_request(parent)
    try:
        results = app.send_many("t.any", [(1,), (2,)])
    finally:
        pop_request(token)
    assert parent.children == [r.id for r in results]
    assert {(m.root_id, m.parent_id) for m in _stored(app)} == {("root-1", "parent-1")}


def test_send_many_on_commit_waits_for_the_transaction() -> None:
    app = make_app()
    held: list[Callable[[], object]] = []

    def transaction(send: Callable[[], object]) -> bool:
        held.append(send)
        return True

    signals.add_deferrer(transaction)
    try:
        results = app.send_many("t.any", [(1,), (2,)], on_commit=True)
    finally:
        signals.remove_deferrer(transaction)
    assert _stored(app) == [] and len(held) == 1
    held[0]()
    assert [m.id for m in _stored(app)] == [r.id for r in results]


# -- .delay() from a per-task template (Conveyor._send_plain) ------------------

def _one_stored(app: Conveyor, queue: str = "default") -> tuple[bytes, Message]:
    deliveries = app.broker.reserve([queue], 10, lease=30, timeout=0)
    assert len(deliveries) == 1
    return deliveries[0].body, Message.decode(deliveries[0].body, ["json", "pickle"])


@pytest.mark.parametrize("settings", [
    {}, {"task_serializer": "pickle", "accept_content": ["pickle"]},
    {"task_routes": {"shop.*": {"queue": "shop", "priority": 3}}},
])
def test_a_plain_delay_sends_the_bytes_the_general_path_would(settings: dict[str, Any]) -> None:
    app = make_app(**settings)

    @app.task(name="shop.pay", priority=2)
    def pay(*args: Any, **kwargs: Any) -> None: ...

    queue = "shop" if "task_routes" in settings else "default"
    for call in [((), {}), ((1, (2, 3)), {"note": "é"}), ((None,), {})]:
        result = pay.delay(*call[0], **call[1])
        body, sent = _one_stored(app, queue)
        assert sent.id == result.id and (sent.args, sent.kwargs) == call
        general = app.build_message("shop.pay", *call).evolve(id=sent.id, created=sent.created)
        assert body == general.encode()
    assert "shop.pay" in app._plain  # (the template path was taken)


def test_a_changed_setting_or_task_option_reaches_the_next_delay() -> None:
    app = make_app()

    @app.task(name="t.x")
    def x() -> None: ...

    x.delay()
    _one_stored(app)
    app.conf.task_default_queue = "elsewhere"
    x.delay()
    _, sent = _one_stored(app, "elsewhere")
    assert sent.queue == "elsewhere"
    x.priority = 6  # as Celery code does: the task's options are replaced
    x.delay()
    _, sent = _one_stored(app, "elsewhere")
    assert sent.priority == 6


def test_a_delay_after_the_broker_was_reopened_sends_through_the_new_one() -> None:
    """The template is kept with the broker it was made for: a closed app (or a
    forked child) opens another broker, and the next ``.delay()`` must use it."""
    app = make_app()

    @app.task(name="t.y")
    def y() -> None: ...

    y.delay()
    first = app.broker
    _one_stored(app)
    app.close()
    sent = y.delay()
    assert app._plain["t.y"][2] is app.broker is not first
    _, stored = _one_stored(app)
    assert stored.id == sent.id


def test_a_delay_inside_a_task_records_its_parent() -> None:
    app = make_app()

    @app.task(name="t.x")
    def x() -> None: ...

    x.delay()  # the template exists now
    _one_stored(app)
    parent = Request(id="parent-id", task="t.parent", root_id="root-id")
    token = push_request(parent)
    try:
        child = x.delay()
    finally:
        pop_request(token)
    _, sent = _one_stored(app)
    assert (sent.parent_id, sent.root_id) == ("parent-id", "root-id")
    assert parent.children == [child.id]


def test_a_receiver_connected_after_the_first_delay_sees_the_next() -> None:
    app = make_app()

    @app.task(name="t.x")
    def x() -> None: ...

    x.delay()
    seen: list[str] = []

    def receiver(sender: Any = None, headers: Any = None, **_: Any) -> None:
        seen.append(headers["id"])
        headers["added"] = "yes"

    signals.before_task_publish.connect(receiver)
    try:
        result = x.delay()
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [result.id]
    sent = _stored(app)
    assert sent[-1].headers == {"added": "yes"}


def test_a_bad_argument_is_named_by_a_plain_delay() -> None:
    app = make_app()

    @app.task(name="t.x")
    def x(value: Any) -> None: ...

    x.delay(1)
    with pytest.raises(SerializationError, match="positional argument 0"):
        x.delay(object())
    assert len(_stored(app)) == 1


def test_a_send_marks_its_result_new_unless_the_broker_kept_an_older_id() -> None:
    """``AsyncResult._sent`` lets a store skip its first read (``wait_for_new``);
    a send an idempotency key folded into an older message must not set it."""
    import time

    app = Conveyor("new", broker=f"memory://new-{uuid.uuid4().hex}", set_as_current=False)

    @app.task(name="t.add")
    def add(a: int, b: int) -> int:
        return a + b

    before = time.monotonic()
    plain = add.delay(1, 2)
    assert plain._sent is not None and before <= plain._sent <= time.monotonic()
    first = add.apply_async((1, 2), idempotency_key="k")
    assert first._sent is not None
    again = add.apply_async((1, 2), idempotency_key="k")
    assert again.id == first.id and again._sent is None
    assert app.AsyncResult(plain.id)._sent is None
    assert "_sent" not in plain.__getstate__()  # pickled: another process's clock
