"""Canvas values: building, operators, wire form, freezing, and what is sent.

No worker runs here; end-to-end behaviour is in tests/integration/test_canvas.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, GroupResult, chain, chord, chunks, group, signature
from conveyor._message import Message
from conveyor.canvas import Canvas, Signature, derived_id, maybe_signature, xmap, xstarmap
from conveyor.result import AsyncResult
from conveyor.resultstores.base import ResultStore
from conveyor.resultstores.memory import MemoryResultStore
from conveyor.task import Task


@pytest.fixture
def app() -> Iterator[Conveyor]:
    url = f"memory://canvas-unit-{uuid.uuid4().hex}"
    app = Conveyor("canvas-unit", broker=url, backend=url, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def add(app: Conveyor) -> Task:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    return add


@pytest.fixture
def tsum(app: Conveyor) -> Task:
    @app.task(name="t.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    return tsum


def sent(app: Conveyor, queue: str = "default") -> list[Message]:
    """Every message waiting in ``queue``, decoded, in send order."""
    out = []
    while True:
        got = app.broker.reserve([queue], 1000, 30.0, timeout=0)
        if not got:
            return out
        out.extend(Message.decode(d.body, ["json"]) for d in got)


# -- signatures -------------------------------------------------------------------

def test_signature_forms_and_partial_args(add: Task) -> None:
    by_name = signature("t.add", (1,), {"y": 2}, {"queue": "q"}, priority=3)
    assert (by_name.task, by_name.args, by_name.kwargs, by_name.options) == (
        "t.add", (1,), {"y": 2}, {"queue": "q", "priority": 3})
    assert signature(add, (1, 2)) == add.s(1, 2)
    assert signature(add.s(1).to_dict()) == add.s(1)
    assert add.s(2).partial((1,), {}) == ((1, 2), {})
    assert add.si(2, 3).partial((1,), {"z": 0}) == ((2, 3), {})


def test_set_and_link_change_the_signature_in_place_as_celery(add: Task) -> None:
    """Celery: canvas.py Signature.set returns self; link/link_error return the callback."""
    base = add.s(1)
    assert base.set(queue="orders", countdown=5) is base
    assert base.options == {"queue": "orders", "countdown": 5}
    copy = base.copy_with(queue="other")
    assert copy.options["queue"] == "other" and base.options["queue"] == "orders"
    assert base.clone((2,), {"k": 1}).args == (2, 1)  # Celery: partial args go first
    assert add.si(1, 2).clone((3,)).args == (1, 2)
    assert base.set(immutable=True) is base and base.immutable
    callback = add.s(10)
    assert base.link(callback) is callback
    assert base.options["link"] == [add.s(10).to_dict()]
    errback = add.s(0)
    assert base.link_error(errback) is errback and base.on_error(errback) is base
    assert base.options["link_error"] == [add.s(0).to_dict()]  # added once
    assert add.s(1) == add.s(1) and add.s(1) != add.s(2)
    as_dict = add.s(7).to_dict()
    assert base.link(as_dict) is as_dict and base.options["link"][-1] == as_dict
    assert maybe_signature(None) is None and maybe_signature(as_dict) == add.s(7)
    members = group(add.s(1), add.s(2))
    assert members.set(immutable=True, queue="q") is members  # Celery: set_immutable
    assert all(t.immutable for t in members.tasks) and "immutable" not in members.options


def test_signature_immutable_keyword_as_celery(add: Task) -> None:
    """Celery: canvas.py signature(varies, ..., immutable=True) builds an immutable signature."""
    sig = signature("t.add", (2, 3), immutable=True, queue="q")
    assert sig.immutable and sig.options == {"queue": "q"}
    assert sig.partial((1,), {}) == ((2, 3), {})


def test_signature_json_round_trip(add: Task) -> None:
    sig = add.si(1, 2).set(queue="q", priority=5)
    sig.link_error(add.s(0))
    again = Canvas.from_dict(json.loads(json.dumps(sig.to_dict())))
    assert again == sig and isinstance(again, Signature) and again.immutable


def test_nested_canvas_round_trips_through_json(add: Task, tsum: Task) -> None:
    flow = chain(
        add.s(1, 1),
        chord([chain(add.s(1), add.s(2)), group(add.s(3), add.s(4))], tsum.s().set(queue="x")),
        group(add.s(5), add.s(6)),
        chunks(add, [(1, 2), (3, 4)], 1),
    ).on_error(add.si(0, 0))
    doc = flow.to_dict()
    assert doc["subtask_type"] == "chain"
    assert doc["tasks"][1]["subtask_type"] == "chord"
    again = Canvas.from_dict(json.loads(json.dumps(doc)))
    assert again == flow and again.to_dict() == doc


def test_unknown_subtask_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown canvas subtask_type 'map'"):
        Canvas.from_dict({"subtask_type": "map"})


# -- operators -------------------------------------------------------------------

def test_pipe_builds_flat_chains(add: Task) -> None:
    flow = add.s(1, 1) | add.s(2) | add.s(3)
    assert isinstance(flow, chain) and [t.args for t in flow.tasks] == [(1, 1), (2,), (3,)]
    longer = flow | (add.s(4) | add.s(5))
    assert isinstance(longer, chain) and len(longer.tasks) == 5


def test_group_pipe_task_is_a_chord_and_group_pipe_group_a_chain(add: Task, tsum: Task) -> None:
    grp = group(add.s(1, 1), add.s(2, 2))
    made = grp | tsum.s()
    assert isinstance(made, chord) and made.body == tsum.s() and made.header == grp
    both = grp | group(tsum.s(), tsum.s())
    assert isinstance(both, chain) and all(isinstance(t, group) for t in both.tasks)


def test_group_accepts_list_args_and_generator(add: Task) -> None:
    assert len(group(add.s(1, 1), add.s(2, 2))) == 2
    assert len(group([add.s(i, i) for i in range(3)])) == 3
    assert len(group(add.s(i, i) for i in range(4))) == 4
    with pytest.raises(TypeError, match="group\\(\\) takes signatures"):
        group([1, 2])  # type: ignore[list-item]


def test_empty_chain_and_bodyless_chord_are_refused(app: Conveyor, add: Task) -> None:
    with pytest.raises(ValueError, match="empty chain"):
        chain(app=app).delay()
    with pytest.raises(ValueError, match="no body"):
        chord([add.s(1, 1)]).delay()


# -- freezing ---------------------------------------------------------------------

def test_freeze_pushes_chain_options_to_the_right_steps(add: Task) -> None:
    err, done = add.si(0, 0), add.s(100)
    flow = chain(add.s(1, 1), add.s(2), add.s(3)).set(queue="q", countdown=5, task_id="last")
    flow.link_error(err)
    flow.link(done)
    frozen = flow.freeze()
    assert isinstance(frozen, chain)
    first, middle, last = frozen.tasks
    assert all(step.options["queue"] == "q" for step in frozen.tasks)
    assert first.options["countdown"] == 5 and "countdown" not in middle.options
    assert all(step.options["link_error"] == [err.to_dict()] for step in frozen.tasks)
    assert last.options["link"] == [done.to_dict()] and "link" not in first.options
    assert last.options["task_id"] == "last" and first.options["task_id"] != "last"


def test_freeze_is_idempotent_and_names_every_call(add: Task, tsum: Task) -> None:
    flow = chord([add.s(1, 1), chain(add.s(2, 2), add.s(3))], tsum.s()).set(task_id="body")
    frozen = flow.freeze()
    assert frozen.freeze() == frozen
    assert isinstance(frozen, chord) and frozen.body is not None
    assert isinstance(frozen.body, Signature) and frozen.body.id == "body"
    member = frozen.header.tasks[0]
    assert isinstance(member, Signature)
    assert member.options["group_id"] == frozen.header.id and member.options["group_index"] == 0


def test_chord_link_error_goes_to_the_body(add: Task, tsum: Task) -> None:
    err = add.si(0, 0)
    frozen = chord([add.s(1, 1)], tsum.s()).on_error(err).freeze()
    assert isinstance(frozen, chord) and frozen.body is not None
    assert frozen.body.options["link_error"] == [err.to_dict()]
    assert "link_error" not in frozen.header.tasks[0].options


# -- what is sent -------------------------------------------------------------------

def test_chain_sends_first_step_carrying_the_rest(app: Conveyor, add: Task) -> None:
    result = chain(add.s(1, 1), add.s(2), add.s(3)).delay()
    (first,) = sent(app)
    assert first.args == (1, 1) and [s["args"] for s in first.chain] == [[2], [3]]
    assert isinstance(result, AsyncResult) and result.parent is not None
    assert result.parent.parent is not None and result.parent.parent.id == first.id
    assert result.id == first.chain[-1]["options"]["task_id"]


def test_chord_header_messages_carry_the_join(app: Conveyor, add: Task, tsum: Task) -> None:
    result = chord([add.s(i, i) for i in range(3)], tsum.s()).delay()
    messages = sent(app)
    assert isinstance(result, AsyncResult) and isinstance(result.parent, GroupResult)
    assert [m.chord["index"] for m in messages if m.chord] == [0, 1, 2]
    scope = messages[0].chord
    assert scope is not None and scope["size"] == 3 and scope["id"] == result.parent.id
    assert scope["body"]["options"]["task_id"] == result.id
    assert [r.id for r in result.parent] == [m.id for m in messages]


def test_group_of_10000_is_one_broker_batch(app: Conveyor, add: Task,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    broker = app.broker
    calls: list[int] = []
    real_many = broker.enqueue_many

    def counting_many(envelopes: Any) -> list[str]:
        calls.append(len(envelopes))
        return real_many(envelopes)

    def single(envelope: Any) -> str:
        raise AssertionError("a group must not send one message at a time")

    monkeypatch.setattr(broker, "enqueue_many", counting_many)
    monkeypatch.setattr(broker, "enqueue", single)
    result = group(add.s(i, i) for i in range(10_000)).delay()
    assert calls == [10_000]
    assert len(result) == 10_000 and result.results[9_999].id == sent(app)[9_999].id


def test_wrong_arguments_fail_at_send_time(app: Conveyor, add: Task) -> None:
    with pytest.raises(TypeError, match=r"t\.add"):
        group(add.s(1), add.s(1, 2)).delay()
    assert sent(app) == []


def test_group_result_save_and_restore(app: Conveyor, add: Task) -> None:
    result = group(add.s(1, 1), add.s(2, 2)).delay()
    restored = GroupResult.restore(result.id, app=app)
    assert restored is not None and [r.id for r in restored] == [r.id for r in result]
    assert GroupResult.restore("missing", app=app) is None
    made = GroupResult("mine", [app.AsyncResult("a"), app.AsyncResult("b")], app).save()
    again = GroupResult.restore("mine", app=app)
    assert again is not None and [r.id for r in again] == ["a", "b"] and again == made


def test_chunks_and_maps_pack_calls(app: Conveyor, add: Task) -> None:
    packed = add.chunks([(i, i) for i in range(10)], 4)
    assert isinstance(packed, chunks) and [len(s.args[1]) for s in packed.group().tasks] == [
        4, 4, 2]
    assert xmap(add, [1, 2]).task == "conveyor.map" and add.map([1]).args == ("t.add", [1])
    assert xstarmap("t.add", [(1, 2)]).args == ("t.add", [[1, 2]])
    with pytest.raises(ValueError, match="chunk size"):
        chunks(add, [], 0)
    assert {"conveyor.map", "conveyor.starmap", "conveyor.collect"} <= set(app.tasks)


# -- the failure half of the join -----------------------------------------------------

def test_chord_fail_closes_the_join_once() -> None:
    store = MemoryResultStore(f"memory://{uuid.uuid4().hex}")
    assert store.chord_add("c", 0, 2, b"0", 60) is None
    assert store.chord_fail("c", 60) is True
    assert store.chord_fail("c", 60) is False
    assert store.chord_add("c", 1, 2, b"1", 60) is None  # the body never fires
    assert store.chord_add("d", 0, 1, b"0", 60) == [b"0"]
    assert store.chord_fail("d", 60) is False  # too late: the body already fired


def test_default_chord_fail_elects_one_caller() -> None:
    store = MemoryResultStore(f"memory://{uuid.uuid4().hex}")
    assert ResultStore.chord_fail(store, "c", 60) is True
    assert ResultStore.chord_fail(store, "c", 60) is False


def test_derived_ids_are_stable() -> None:
    assert derived_id("g", "collect") == derived_id("g", "collect") != derived_id("h", "collect")


# -- the runtime, driven by hand ------------------------------------------------------

def test_a_repeated_step_resends_the_same_follow_up(app: Conveyor, add: Task) -> None:
    from conveyor import _workflow as workflow

    flow = chain(add.s(1, 1), add.s(2), add.s(3))
    flow.link(add.s(0))
    flow.delay()
    (first,) = sent(app)
    workflow.on_success(app, first, 2)
    workflow.on_success(app, first, 2)  # its worker died before the ack: run again
    follow = sent(app)
    assert len(follow) == 1 and follow[0].args == (2, 2)
    assert follow[0].parent_id == first.id and follow[0].root_id == first.id
    assert follow[0].chain[0]["args"] == [3]


def test_chord_join_sends_the_body_once_in_header_order(app: Conveyor, add: Task,
                                                        tsum: Task) -> None:
    from conveyor import _workflow as workflow

    result = chord([add.s(i, i) for i in range(4)], tsum.s()).delay()
    header = sent(app)
    for message in reversed(header):  # finishing in reverse order
        workflow.on_success(app, message, message.args[0] * 10)
    workflow.on_success(app, header[0], 0)  # a redelivered header adds nothing
    (body,) = sent(app)
    assert body.id == result.id and body.args == ([0, 10, 20, 30],)


ELSEWHERE = signature("t.elsewhere", (0, 0), immutable=True)
"""An errback this process does not have: sent as a task (Celery: backends/base.py)."""


def test_chord_failure_is_handled_once(app: Conveyor, add: Task, tsum: Task) -> None:
    from conveyor import _workflow as workflow

    result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).on_error(ELSEWHERE).delay()
    first, second = sent(app)
    workflow.on_failure(app, first, ValueError("bad"), None)
    workflow.on_failure(app, second, ValueError("worse"), None)
    workflow.on_success(app, second, 4)
    errbacks = sent(app)
    assert [m.task for m in errbacks] == ["t.elsewhere"] and errbacks[0].args == (0, 0)
    assert result.state == "FAILURE"
    with pytest.raises(ValueError, match="bad"):
        result.get(timeout=1)


def test_composition_apply_async_accepts_callbacks_as_signatures(app: Conveyor,
                                                                 add: Task) -> None:
    flow = chain(add.s(1, 1), add.s(2))
    result = flow.apply_async(link=add.s(9), link_error=[add.si(0, 0)], queue="q")
    (first,) = sent(app, "q")
    assert first.errbacks == (add.si(0, 0).to_dict(),)
    last = first.chain[-1]
    assert last["options"]["link"] == [add.s(9).to_dict()]
    assert last["options"]["queue"] == "q" and last["options"]["task_id"] == result.id


def test_follow_up_with_wrong_arguments_fails_like_a_task(app: Conveyor, add: Task) -> None:
    from conveyor import _workflow as workflow

    result = chain(add.s(1, 1), add.s(1, 2)).on_error(ELSEWHERE).delay()
    (first,) = sent(app)
    workflow.on_success(app, first, 2)
    assert [m.args for m in sent(app)] == [(0, 0)]  # the errback, not the step
    assert result.state == "FAILURE"
    with pytest.raises(TypeError, match=r"t\.add"):
        result.get(timeout=1)


def test_a_revoked_header_fails_its_chord(app: Conveyor, add: Task, tsum: Task) -> None:
    from conveyor import _workflow as workflow
    from conveyor.exceptions import TaskRevokedError

    result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
    first, _ = sent(app)
    workflow.on_revoked(app, first, "was revoked")
    with pytest.raises(TaskRevokedError):
        result.get(timeout=1)
