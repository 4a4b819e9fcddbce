"""A redelivered chord completer sends the body again, unless the body already started.

No worker runs here (the real crash is tests/faults/test_chord_crash.py): the
header's follow-up (``workflow.on_success``) is called twice, as a worker
killed between ``chord_add`` and the body's enqueue would have it.
"""

from __future__ import annotations

from conveyor import Conveyor, chord
from conveyor import _workflow as workflow
from conveyor._message import Message
from conveyor.brokers.base import Delivery
from conveyor.task import Task
from tests.unit import test_canvas_unit

# The canvas unit tests' fixtures (app on a memory broker, tasks t.add and t.tsum).
app, add, tsum = test_canvas_unit.app, test_canvas_unit.add, test_canvas_unit.tsum


def leased(app: Conveyor) -> list[tuple[Message, Delivery]]:
    got = app.broker.reserve(["default"], 1000, 30.0, timeout=0)
    return [(Message.decode(d.body, ["json"]), d) for d in got]


def complete_header(app: Conveyor, add: Task, tsum: Task) -> tuple[str, Message]:
    """Send a two-member chord and run its header; returns (body id, completing header)."""
    result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
    (first, _), (second, _) = leased(app)
    workflow.on_success(app, first, 2)
    workflow.on_success(app, second, 4)
    return result.id, second


def test_repeat_sends_a_body_that_was_never_sent(app: Conveyor, add: Task, tsum: Task) -> None:
    result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
    (first, _), (second, _) = leased(app)
    workflow.on_success(app, first, 2)
    # The completer's first run: chord_add handed it the parts, then it died.
    assert second.chord is not None
    payload = workflow.encode_value(app, 4)
    assert app.backend.chord_add(second.chord["id"], 1, 2, payload, 60) is not None
    assert leased(app) == []
    workflow.on_success(app, second, 4)  # redelivered
    ((body, _),) = leased(app)
    assert body.id == result.id and body.args == ([2, 4],)


def test_repeat_while_the_body_is_queued_or_leased_adds_no_copy(
        app: Conveyor, add: Task, tsum: Task) -> None:
    body_id, completer = complete_header(app, add, tsum)
    ((body, _),) = leased(app)
    assert body.id == body_id
    workflow.on_success(app, completer, 4)  # redelivered: the broker holds that id
    assert leased(app) == []


def test_repeat_after_the_body_ran_does_not_send_it_again(
        app: Conveyor, add: Task, tsum: Task) -> None:
    body_id, completer = complete_header(app, add, tsum)
    ((body, delivery),) = leased(app)
    workflow.mark_failed(app, [(body.id, body.task)], ValueError("ran"), None)  # a record
    assert app.broker.ack([delivery]) == [True]
    workflow.on_success(app, completer, 4)
    assert leased(app) == []
    assert app.AsyncResult(body_id).state == "FAILURE"


def test_repeat_of_another_header_sends_nothing(app: Conveyor, add: Task, tsum: Task) -> None:
    result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
    (first, _), (second, _) = leased(app)
    workflow.on_success(app, first, 2)
    workflow.on_success(app, second, 4)
    ((body, delivery),) = leased(app)
    assert app.broker.ack([delivery]) == [True]
    workflow.on_success(app, first, 2)  # not the completer: None, whatever the body did
    assert leased(app) == [] and body.id == result.id
