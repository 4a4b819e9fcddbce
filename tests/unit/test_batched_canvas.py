"""Group and chord-header members sent from one template (conveyor/_batching.py).

The batch path must send exactly what building each member on its own
sends: the same message fields and the same bytes ``Message.encode``
writes.  The reference here is the per-message path, which the same frozen
canvas takes when a callable router is configured (a router may look at
each call's arguments, so no template is used).  No worker runs here;
tests/integration/test_batched_canvas.py runs groups and chords end to end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, GroupResult, chain, chord, group, signals
from conveyor._batching import Prebuilt
from conveyor._context import Request, pop_request, push_request
from conveyor._message import Message
from conveyor._workflow import Plan, launch
from conveyor.canvas import Canvas
from conveyor.exceptions import SerializationError
from conveyor.task import Task

ACCEPT = ["json", "pickle"]


def make_app(**settings: Any) -> Conveyor:
    url = f"memory://batched-{uuid.uuid4().hex}"
    return Conveyor("batched", broker=url, backend=url, set_as_current=False, **settings)


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = make_app()
    yield app
    app.close()


def _tasks(app: Conveyor) -> tuple[Task, Task]:
    @app.task(name="t.add")
    def add(x: Any, y: Any = 0) -> Any:
        return x

    @app.task(name="t.tsum")
    def tsum(values: list[Any]) -> int:
        return len(values)

    return add, tsum


def _comparable(message: Message) -> dict[str, Any]:
    """The wire document without the creation time (and times relative to it)."""
    doc = message._doc()
    del doc["created"]
    for relative in ("expires", "eta"):
        if relative in doc:
            doc[relative] = round(doc[relative] - message.created)
    return doc


def _built(app: Conveyor, frozen: Canvas) -> list[Message | Prebuilt]:
    plan = Plan(app)
    launch(plan, frozen, (), {}, (), None)
    return plan.messages


def _per_message(frozen: Canvas, app_settings: dict[str, Any]) -> list[Message | Prebuilt]:
    """The same frozen canvas built one message at a time (a callable router)."""
    reference = make_app(task_routes=[lambda *a: None], **app_settings)
    _tasks(reference)
    try:
        return _built(reference, Canvas.from_dict(frozen.to_dict(), reference))
    finally:
        reference.close()


CANVASES = {
    "plain group": lambda add, tsum: group(add.s(i) for i in range(40)),
    "arguments of every kind": lambda add, tsum: group(
        [add.s(i, y=(i, "é")) for i in range(10)] + [add.s([i], y={"k": None}) for i in range(10)]
        + [add.s("x\"\\\n", 1.5) for _ in range(5)]),
    "group options": lambda add, tsum: group(
        (add.s(i) for i in range(30)),
    ).set(queue="q1", priority=5, countdown=30, expires=600, time_limit=9,
          headers={"trace": "t"}, link_error=tsum.si([]), link=tsum.si([1])),
    "chord header": lambda add, tsum: chord((add.s(i) for i in range(30)), tsum.s()),
    "chord in a chain": lambda add, tsum: chain(
        chord((add.s(i) for i in range(25)), tsum.s()), add.s(), add.s()),
    "groups in a chord header": lambda add, tsum: chord(
        [group(add.s(i) for i in range(12)), group(add.s(i) for i in range(12, 20))],
        tsum.s()),
    "mixed tasks": lambda add, tsum: group(
        (add.s(i) if i % 3 else tsum.s([i])) for i in range(30)),
    "a member with its own options": lambda add, tsum: group(
        [add.s(i) for i in range(10)] + [add.s(10).set(queue="q2", priority=9, countdown=5)]
        + [add.s(i) for i in range(11, 20)]),
}


@pytest.mark.parametrize("settings", [{}, {"task_serializer": "pickle",
                                           "accept_content": ACCEPT}])
@pytest.mark.parametrize("name", list(CANVASES))
def test_batched_members_are_the_messages_built_one_by_one(name: str,
                                                           settings: dict[str, Any]) -> None:
    app = make_app(**settings)
    add, tsum = _tasks(app)
    frozen = CANVASES[name](add, tsum).freeze()
    batched = _built(app, frozen)
    reference = _per_message(frozen, settings)
    assert any(isinstance(item, Prebuilt) for item in batched), "the template was not used"
    assert not any(isinstance(item, Prebuilt) for item in reference)
    assert len(batched) == len(reference)
    for item, expected in zip(batched, reference, strict=True):
        assert isinstance(expected, Message)
        message = item.message() if isinstance(item, Prebuilt) else item
        assert _comparable(message) == _comparable(expected)
        if isinstance(item, Prebuilt):
            # The spliced bytes are the encoder's bytes for that message...
            assert item.envelope.body == message.encode()
            # ...and the envelope routes it as app.envelope() would.
            plain = app.envelope(message)
            assert (item.envelope.id, item.envelope.queue, item.envelope.priority,
                    item.envelope.eta) == (plain.id, plain.queue, plain.priority, plain.eta)
            assert Message.decode(item.envelope.body, ACCEPT) == message
    app.close()


def test_a_group_is_queued_in_member_order_with_its_group_saved(app: Conveyor) -> None:
    add, _ = _tasks(app)
    result = group(add.s(i) for i in range(2500)).apply_async()
    deliveries = app.broker.reserve(["default"], 10_000, lease=30, timeout=0)
    sent = [Message.decode(d.body, ACCEPT) for d in deliveries]
    assert [m.id for m in sent] == [r.id for r in result.results]
    assert [(m.args, m.group_id, m.group_index) for m in sent] == [
        ((i,), result.id, i) for i in range(2500)]
    restored = GroupResult.restore(result.id, app=app)
    assert restored is not None and [r.id for r in restored.results] == [
        r.id for r in result.results]


def test_publish_signals_fire_per_member_with_their_headers(app: Conveyor) -> None:
    """Celery sends before/after_task_publish once per message of a group; a
    header a before receiver adds travels with that message."""
    add, _ = _tasks(app)
    before: list[str] = []
    after: list[str] = []

    def stamp(sender: str, headers: dict[str, Any], **_: Any) -> None:
        before.append(headers["id"])
        headers["x-trace"] = f"trace-{headers['group_index']}"

    def seen(sender: str, headers: dict[str, Any], **_: Any) -> None:
        after.append(headers["id"])

    signals.before_task_publish.connect(stamp)
    signals.after_task_publish.connect(seen)
    try:
        result = group(add.s(i) for i in range(20)).apply_async()
    finally:
        signals.before_task_publish.disconnect(stamp)
        signals.after_task_publish.disconnect(seen)
    ids = [r.id for r in result.results]
    assert before == ids and after == ids
    sent = [Message.decode(d.body, ACCEPT)
            for d in app.broker.reserve(["default"], 100, lease=30, timeout=0)]
    assert [m.headers["x-trace"] for m in sent] == [f"trace-{i}" for i in range(20)]


def test_a_receiver_connected_before_a_deferred_send_still_sees_every_member(
        app: Conveyor) -> None:
    """Built without receivers (templated), sent after one connected: it gets a
    Message per member, as if they had been built one by one."""
    add, _ = _tasks(app)
    frozen = group(add.s(i) for i in range(10)).freeze()
    plan = Plan(app)
    launch(plan, frozen, (), {}, (), None)
    assert any(isinstance(item, Prebuilt) for item in plan.messages)
    got: list[tuple[str, Any]] = []

    def seen(sender: str, headers: dict[str, Any], body: Any, **_: Any) -> None:
        got.append((headers["id"], body[0]))

    signals.after_task_publish.connect(seen)
    try:
        plan.commit()
    finally:
        signals.after_task_publish.disconnect(seen)
    assert got == [(m.id, [i]) for i, m in enumerate(frozen.tasks)]


def test_a_callable_router_is_asked_about_every_member() -> None:
    def by_parity(name: str, args: Any, kwargs: Any, options: Any) -> str:
        return "even" if args[0] % 2 == 0 else "odd"

    app = make_app(task_routes=[by_parity])
    add, _ = _tasks(app)
    group(add.s(i) for i in range(10)).apply_async()
    even = app.broker.reserve(["even"], 100, lease=30, timeout=0)
    odd = app.broker.reserve(["odd"], 100, lease=30, timeout=0)
    assert [Message.decode(d.body, ACCEPT).args for d in even] == [(i,) for i in range(0, 10, 2)]
    assert [Message.decode(d.body, ACCEPT).args for d in odd] == [(i,) for i in range(1, 10, 2)]


def test_a_group_sent_inside_a_task_records_every_member_as_a_child(app: Conveyor) -> None:
    add, _ = _tasks(app)
    parent = Request(id="parent-1", root_id="root-1")
    token = push_request(parent)
    try:
        result = group(add.s(i) for i in range(15)).apply_async()
    finally:
        pop_request(token)
    assert parent.children == [r.id for r in result.results]
    sent = [Message.decode(d.body, ACCEPT)
            for d in app.broker.reserve(["default"], 100, lease=30, timeout=0)]
    assert {(m.root_id, m.parent_id) for m in sent} == {("root-1", "parent-1")}


def test_a_bad_member_fails_the_send_and_names_its_argument(app: Conveyor) -> None:
    add, _ = _tasks(app)
    with pytest.raises(SerializationError, match="positional argument 0"):
        group([add.s(1), add.s(2), add.s(object())]).apply_async()
    with pytest.raises(TypeError, match=r"t\.add"):
        group([add.s(1), add.s(2), add.s()]).apply_async()
    assert app.broker.reserve(["default"], 100, lease=30, timeout=0) == []


def test_the_size_limit_holds_for_batched_members() -> None:
    app = make_app(task_message_max_bytes=400)
    add, _ = _tasks(app)
    with pytest.raises(SerializationError, match="task_message_max_bytes=400"):
        group([add.s("a"), add.s("b"), add.s("x" * 500)]).apply_async()
    assert app.broker.reserve(["default"], 100, lease=30, timeout=0) == []
