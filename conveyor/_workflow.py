"""What happens after a task finishes: callbacks, chain steps, chord joins.

The worker calls :func:`on_success` / :func:`on_failure` after storing the
task's result and before acknowledging its message, so a crash in between
repeats the follow-up instead of losing it.  Follow-ups keep the ids given
to them when the workflow was first sent (or ids derived from the finished
task's id), so a repeated follow-up is one the broker already holds.

Every message carries the rest of its workflow (docs/decisions/0002-canvas.md):

``chain``
    the steps still to run after this task, as frozen canvas dicts; the
    first of them is sent with this task's result prepended to its args.
``chord``
    the *scope* this task's final value belongs to, acted on when ``chain``
    is empty.  A join scope (it has a ``body``) is a chord header slot::

        {"id": chord_id, "size": N, "index": i, "body": body_dict,
         "chain": steps_after_the_body, "chord": outer_scope, "errbacks": [...]}

    On success the value goes into ``ResultStore.chord_add``; the one call
    that completes the set sends the body with the values in header order.
    A header that does nothing else on success joins in the same store call
    as its result write (``set_many_fenced_and_join``, only if the write was
    stored), made by its worker's supervisor when its slot is busy, which
    then sends the body (ADR 0033; :func:`only_joins`, :func:`on_joined`).
    An error scope (no ``body``) only carries a group's ``link_error``.  On
    failure, ``ResultStore.chord_fail`` elects one failing member to fail
    the scope: the body and everything after it are stored as FAILURE with
    the member's error, the errbacks are sent once, and the outer scope
    fails the same way.

A group with something after it (a next step, or a join) is sent as a chord
whose body is that next step (or ``conveyor.collect``, which returns the
list), so every "wait for all of them" is the store's atomic join: there is
no polling ``chord_unlock`` task.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from conveyor import _batching as batching
from conveyor import _errbacks as errbacks_module
from conveyor import _part_context as part_context
from conveyor import _publishing as publishing
from conveyor import signals, states
from conveyor._batching import MessageBatch, Prebuilt
from conveyor._context import Request, running_request
from conveyor._gc import paused as paused_gc
from conveyor._serialization import (
    JSON,
    check_accepted,
    content_type_for,
    decode_payload,
    dumps_json,
    encode_payload,
)
from conveyor.canvas import (
    COLLECT_TASK,
    Canvas,
    Signature,
    chain,
    chord,
    derived_id,
    group,
    seeded_ids,
)
from conveyor.exceptions import BrokerError, NotRegistered, SerializationError, TaskRevokedError
from conveyor.result import AsyncResult, GroupResult, save_group
from conveyor.resultstores.base import JoinPart

if TYPE_CHECKING:
    from conveyor._message import Message
    from conveyor.app import Conveyor
    from conveyor.task import Task

log = logging.getLogger("conveyor.workflow")

Mode = Literal["final", "next", "join"]
"""How a node's value is used: by nobody, by the next chain step, by a chord join."""
FINAL: Mode = "final"
NEXT: Mode = "next"
JOIN: Mode = "join"

Scope = dict[str, Any]
Tail = tuple[dict[str, Any], ...]

# A follow-up that cannot even be built (wrong arguments for its task, a
# value JSON cannot carry) fails where it would have run, not the worker.
_BUILD_ERRORS = (TypeError, ValueError, SerializationError, NotRegistered)
_SEND_RETRY_FOR = 10.0


# -- sending ---------------------------------------------------------------------

@dataclass
class Plan:
    """Messages and group memberships gathered to be written in one go."""

    app: Conveyor
    root_id: str | None = None
    parent_id: str | None = None
    messages: list[Message | Prebuilt] = field(default_factory=list)
    groups: list[tuple[str, list[str]]] = field(default_factory=list)
    _shape: _Shape | None = None

    def extend(self, other: Plan) -> None:
        self.messages.extend(other.messages)
        self.groups.extend(other.groups)

    def fork(self) -> Plan:
        return Plan(self.app, self.root_id, self.parent_id)

    def build(self, name: str, task: Task | None, args: tuple[Any, ...],
              kwargs: dict[str, Any], options: dict[str, Any], tail: Tail,
              scope: Scope | None) -> Message | Prebuilt:
        """The message of one call; from a template once a second call has its shape.

        Calls of one shape (a group's or a chord header's members) differ
        only in id, arguments and index, so from the second one on they are
        encoded from the first's template (:mod:`conveyor._batching`); a
        lone call is built as ``apply_async`` builds it.
        """
        shape = self._shape
        if shape is not None and shape.fits(name, options, tail, scope):
            batch = shape.batch if shape.batch is not None else shape.start(self.app, task)
            if batch:
                parent = shape.parent
                if parent is not None:
                    parent.children.append(options["task_id"])
                return batch.prebuilt(options["task_id"], args, kwargs,
                                      options.get("group_index"),
                                      scope.get("index") if scope is not None else None)
        elif "task_id" in options:
            self._shape = _Shape(name, options, tail, scope)
        return self.app.build_message(name, args, kwargs, _task=task, chain=tail, chord=scope,
                                      **options)

    def commit(self) -> None:
        """Save groups, then enqueue every message in one broker batch."""
        for group_id, ids in self.groups:
            save_group(self.app, group_id, ids)
        if self.messages:
            _with_retry(lambda: batching.enqueue(self.app, self.messages))


_MISSING = object()
_PER_CALL = frozenset({"task_id", "group_index"})


class _Shape:
    """What the calls that may share one template have in common.

    The first call of a shape is built the ordinary way and remembered
    here; the second call that :meth:`fits` starts a :class:`MessageBatch`.
    """

    __slots__ = ("batch", "options", "parent", "scope", "tail", "task")

    def __init__(self, task: str, options: dict[str, Any], tail: Tail,
                 scope: Scope | None) -> None:
        self.task = task
        self.options = options
        self.tail = tail
        self.scope = scope
        self.batch: MessageBatch | Literal[False] | None = None
        self.parent: Request | None = None

    def fits(self, task: str, options: dict[str, Any], tail: Tail, scope: Scope | None) -> bool:
        """Same task, options, rest of the workflow and scope, but for id and indexes."""
        ref = self.options
        if task != self.task or len(options) != len(ref) or "task_id" not in options or (
                ("group_index" in options) != ("group_index" in ref)):
            return False
        for key, value in options.items():
            if key not in _PER_CALL:
                known = ref.get(key, _MISSING)
                if known is not value and known != value:
                    return False
        if tail is not self.tail and tail != self.tail:
            return False
        return _same_scope(scope, self.scope)

    def start(self, app: Conveyor, task: Task | None) -> MessageBatch | Literal[False]:
        """The template for this shape, or False where a template would not be exact.

        Not with publish signal receivers (they get one ``Message`` each and
        may add headers to it), nor with a router that may look at a
        call's arguments.
        """
        if publishing.watched() or not app.routes.by_name_only:
            self.batch = False
            return False
        self.parent = running_request()
        prototype = app._new_message(self.task, task, (), {},
                                     {**self.options, "chain": self.tail, "chord": self.scope},
                                     self.parent)
        self.batch = MessageBatch(app, prototype)
        return self.batch


def _same_scope(scope: Scope | None, ref: Scope | None) -> bool:
    if scope is None or ref is None:
        return scope is ref
    if len(scope) != len(ref) or ("index" in scope) != ("index" in ref):
        return False
    for key, value in scope.items():
        if key != "index":
            known = ref.get(key, _MISSING)
            if known is not value and known != value:
                return False
    return True


def _with_retry(send: Any) -> None:
    """Ride out a broker blip; past that, raise so the finished task is redelivered."""
    deadline = time.monotonic() + _SEND_RETRY_FOR
    delay = 0.05
    while True:
        try:
            send()
            return
        except BrokerError:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("could not send follow-up tasks; retrying in %.2fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def send(app: Conveyor, node: Canvas, args: tuple[Any, ...], kwargs: dict[str, Any],
         on_commit: bool | None = None) -> AsyncResult | GroupResult:
    """Freeze ``node``, send what runs first in one batch, return its final result.

    Messages are built (and arguments checked) now; with ``on_commit`` (default:
    ``task_enqueue_on_commit``) they are written when the caller's open
    database transaction commits, as single tasks are.  The garbage collector
    waits meanwhile (:mod:`conveyor._gc`: a group of 20,000 would otherwise
    spend a fifth of its time in collections that find nothing).
    """
    with paused_gc():
        frozen = node.freeze()
        plan = Plan(app)
        launch(plan, frozen, args, kwargs, (), None)
        if on_commit is None:
            on_commit = app.conf.task_enqueue_on_commit
        if not (on_commit and signals.defer_until_commit(plan.commit)):
            plan.commit()
        return result_of(app, frozen, None, FINAL)


def launch(plan: Plan, node: Canvas, args: tuple[Any, ...], kwargs: dict[str, Any],
           tail: Tail, scope: Scope | None) -> None:
    """Add the messages that start frozen ``node`` to ``plan``.

    ``args``/``kwargs`` are the partial arguments (a previous result);
    ``tail`` is what runs after ``node``; ``scope`` is where its final value
    goes (see the module docstring).
    """
    if isinstance(node, Signature):
        plan.messages.append(_task_message(plan, node, args, kwargs, tail, scope))
    elif isinstance(node, chain):
        rest = tuple(step.to_dict() for step in node.tasks[1:])
        launch(plan, node.tasks[0], args, kwargs, rest + tail, scope)
    elif isinstance(node, chord):
        _launch_chord(plan, node, args, kwargs, tail, scope)
    elif isinstance(node, group):
        _launch_group(plan, node, args, kwargs, tail, scope)
    else:
        launch(plan, node.freeze(), args, kwargs, tail, scope)


def _task_message(plan: Plan, sig: Signature, args: tuple[Any, ...], kwargs: dict[str, Any],
                  tail: Tail, scope: Scope | None) -> Message | Prebuilt:
    app = plan.app
    # Nothing to prepend (a group's members, sent first): the call's own
    # arguments, which the message only reads.
    call_args, call_kwargs = sig.partial(args, kwargs) if args or kwargs else (sig.args,
                                                                               sig.kwargs)
    task = app.tasks.get(sig.task)
    if task is not None and task.options.typing:
        task._check_arguments(call_args, call_kwargs)
    options = sig.options  # read only, below and in plan.build
    if "chain" in options or "chord" in options or plan.parent_id is not None:
        options = {k: v for k, v in options.items() if k not in ("chain", "chord")}
        if plan.parent_id is not None:
            options.setdefault("parent_id", plan.parent_id)
            options.setdefault("root_id", plan.root_id)
    return plan.build(sig.task, task, call_args, call_kwargs, options, tail, scope)


def _launch_group(plan: Plan, grp: group, args: tuple[Any, ...], kwargs: dict[str, Any],
                  tail: Tail, scope: Scope | None) -> None:
    if tail or _is_join(scope):
        body = Canvas.from_dict(tail[0], plan.app) if tail else _collector(grp)
        _launch_chord(plan, chord(grp, body, app=grp._app), args, kwargs, tail[1:], scope)
        return
    group_id = _group_id(grp)
    errbacks = list(grp.options.get("link_error") or ())
    size = len(grp.tasks)
    for index, member in enumerate(grp.tasks):
        inner = None
        if errbacks or scope is not None:
            inner = {"id": group_id, "size": size, "index": index, "errbacks": errbacks}
            if scope is not None:
                inner["chord"] = scope
        if isinstance(member, Signature):  # as launch() would, one call less per member
            plan.messages.append(_task_message(plan, member, args, kwargs, (), inner))
        else:
            launch(plan, member, args, kwargs, (), inner)
    plan.groups.append((group_id, [_result_id(plan.app, m, FINAL) for m in grp.tasks]))


def _launch_chord(plan: Plan, ch: chord, args: tuple[Any, ...], kwargs: dict[str, Any],
                  tail: Tail, scope: Scope | None) -> None:
    header, body = ch.header, ch.body
    assert body is not None, "a frozen chord has a body"
    if not header.tasks:
        launch(plan, body, ([],), {}, tail, scope)
        return
    chord_id = _group_id(header)
    join: Scope = {
        "id": chord_id,
        "size": len(header.tasks),
        "body": body.to_dict(),
        "errbacks": _union(entry_errbacks(body), header.options.get("link_error")),
    }
    if tail:
        join["chain"] = list(tail)
    if scope is not None:
        join["chord"] = scope
    for index, member in enumerate(header.tasks):
        if isinstance(member, Signature):  # as launch() would, one call less per member
            plan.messages.append(_task_message(plan, member, args, kwargs, (),
                                               {**join, "index": index}))
        else:
            launch(plan, member, args, kwargs, (), {**join, "index": index})
    plan.groups.append((chord_id, [_result_id(plan.app, m, JOIN) for m in header.tasks]))


def _result_id(app: Conveyor, node: Canvas, mode: Mode) -> str:
    """``result_of(app, node, None, mode).id``, without building handles for a call."""
    if isinstance(node, Signature) and node.id is not None:
        return node.id
    return result_of(app, node, None, mode).id


def _collector(grp: group) -> Signature:
    """The body that turns a group's values into one value (a list)."""
    return Signature(COLLECT_TASK, options={"task_id": derived_id(_group_id(grp), "collect")},
                     app=grp._app)


def _group_id(grp: group) -> str:
    group_id = grp.id
    if group_id is None:
        raise ValueError("group was not frozen before sending")
    return group_id


def entry_errbacks(node: Canvas) -> list[dict[str, Any]]:
    """The errbacks a frozen node's failure sends (a chain's are on every step)."""
    if isinstance(node, chain):
        return entry_errbacks(node.tasks[0])
    if isinstance(node, chord) and node.body is not None:
        return _union(entry_errbacks(node.body), node.header.options.get("link_error"))
    return list(node.options.get("link_error") or ())


def _union(first: Iterable[dict[str, Any]] | None,
           second: Iterable[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = list(first or ())
    out.extend(item for item in second or () if item not in out)
    return out


def _is_join(scope: Mapping[str, Any] | None) -> bool:
    return scope is not None and scope.get("body") is not None


# -- results -------------------------------------------------------------------

def result_of(app: Conveyor, node: Canvas, parent: AsyncResult | GroupResult | None,
              mode: Mode) -> AsyncResult | GroupResult:
    """The result handle of a frozen node, with ``.parent`` links to earlier steps.

    Mirrors :func:`launch`: a group whose value feeds a join is collected
    into one ``conveyor.collect`` result.
    """
    if isinstance(node, Signature):
        assert node.id is not None, "signature was not frozen"
        return AsyncResult(node.id, app, task_name=node.task, parent=parent)
    if isinstance(node, chain):
        current = parent
        for step in node.tasks[:-1]:
            current = result_of(app, step, current, NEXT)
        return result_of(app, node.tasks[-1], current, mode)
    if isinstance(node, chord):
        assert node.body is not None
        header = GroupResult(_group_id(node.header),
                             [result_of(app, m, None, JOIN) for m in node.header.tasks],
                             app, parent=parent)
        return result_of(app, node.body, header, mode)
    if isinstance(node, group):
        inner: Mode = FINAL if mode == FINAL else JOIN
        members = [AsyncResult(m.id, app, task_name=m.task) if type(m) is Signature
                   and m.id is not None else result_of(app, m, None, inner)
                   for m in node.tasks]
        results = GroupResult(_group_id(node), members, app, parent=parent)
        if mode == JOIN:
            return AsyncResult(derived_id(results.id, "collect"), app,
                               task_name=COLLECT_TASK, parent=results)
        return results
    return result_of(app, node.freeze(), parent, mode)


# -- after a task ---------------------------------------------------------------

def on_success(app: Conveyor, message: Message, result: Any) -> None:
    """Send ``link`` callbacks, the next chain step, or the value to its chord."""
    plan = Plan(app, root_id=message.root_id or message.id, parent_id=message.id)
    _add_callbacks(plan, message.callbacks, (result,), f"{message.id}:link")
    if message.chain:
        _continue(plan, message, result)
    elif _is_join(message.chord):
        assert message.chord is not None
        _join(plan, message.chord, message.id, result)
    plan.commit()


def only_joins(message: Message) -> bool:
    """Whether all :func:`on_success` does for ``message`` is its chord join
    (no callbacks, no next step): then the header's result write and its join
    can be one store call (``ResultStore.set_many_fenced_and_join``)."""
    return not message.callbacks and not message.chain and _is_join(message.chord)


def join_part(app: Conveyor, message: Message, result: Any) -> JoinPart | None:
    """The join an :func:`only_joins` header's ``result`` makes, for the store
    call that writes the result.  None when the value cannot be encoded: then
    :func:`on_success` fails the chord, as it always did."""
    scope = message.chord
    assert scope is not None
    try:
        payload = encode_value(app, result, part_context.collect())
    except SerializationError:
        return None
    return JoinPart(scope["id"], scope["index"], scope["size"], payload)


def on_joined(app: Conveyor, message: Message, parts: list[bytes] | None) -> None:
    """:func:`on_success` for an :func:`only_joins` header whose join was made
    with its result write: send the body if that join completed the set."""
    assert message.chord is not None
    if parts is None:
        return
    plan = Plan(app, root_id=message.root_id or message.id, parent_id=message.id)
    _fire(plan, message.chord, parts)
    plan.commit()


def follows_success(message: Message) -> bool:
    """Whether :func:`on_success` has anything to send for ``message``."""
    return bool(message.callbacks or message.chain or _is_join(message.chord))


def on_failure(app: Conveyor, message: Message, exc: BaseException, traceback: str | None) -> None:
    """Run errbacks, fail the rest of the chain, fail the task's chord or group once."""
    request = _failed_request(message)
    send_errbacks(app, message.errbacks, request, exc, traceback, f"{message.id}:errback")
    mark_failed(app, ids_in(message.chain), exc, traceback)
    if message.chord is not None:
        fail_scope(app, message.chord, message.id, exc, traceback, request)


def on_revoked(app: Conveyor, message: Message, reason: str) -> None:
    """A revoked or expired step ends its workflow like a failure, so nothing waits.

    For the executor to call after recording REVOKED: the rest of the chain
    and the step's chord fail with :class:`TaskRevokedError`; errbacks run.
    """
    if message.chain or message.chord is not None or message.errbacks:
        on_failure(app, message, TaskRevokedError(f"task {message.id} {reason}"), None)


def _continue(plan: Plan, message: Message, result: Any) -> None:
    """Send the next chain step with ``result`` prepended to its args."""
    node = Canvas.from_dict(message.chain[0], plan.app)
    rest = tuple(message.chain[1:])
    step = plan.fork()
    try:
        launch(step, node, (result,), {}, rest, message.chord)
    except _BUILD_ERRORS as exc:
        abandon(plan.app, node, rest, message.chord, exc)
        return
    plan.extend(step)


def _join(plan: Plan, scope: Scope, task_id: str, result: Any) -> None:
    """Add this header value; the call that completes the set sends the body.

    A redelivered completer gets the parts again and sends the body again,
    minus the messages that already started (:func:`_drop_started`).
    """
    app = plan.app
    try:
        payload = encode_value(app, result, part_context.collect())
    except SerializationError as exc:
        fail_scope(app, scope, task_id, exc, None)
        return
    parts = app.backend.chord_add(scope["id"], scope["index"], scope["size"], payload,
                                  app.conf.result_expires)
    if parts is not None:
        _fire(plan, scope, parts)


def _fire(plan: Plan, scope: Scope, parts: list[bytes]) -> None:
    """Send the body of a chord whose join this header completed."""
    app = plan.app
    decoded = [decode_value(app, part) for part in parts]
    values = [value for value, _ in decoded]
    body = Canvas.from_dict(scope["body"], app)
    tail = tuple(scope.get("chain") or ())
    step = plan.fork()
    try:
        launch(step, body, (values,), {}, tail, scope.get("chord"))
    except _BUILD_ERRORS as exc:
        abandon(app, body, tail, scope.get("chord"), exc)
        return
    _carry_part_contexts(step, [context for _, context in decoded])
    _drop_started(step)
    plan.extend(step)


def _carry_part_contexts(step: Plan, contexts: list[dict[str, str]]) -> None:
    """Give the body's messages every header's part context, when any header left one.

    Messages are frozen, so each becomes a copy with the header added; a
    prebuilt (batched) one is rebuilt as a message first, which costs the
    batch's speed only when an integration asked for the contexts.
    """
    if not any(contexts):
        return
    carried: list[Message | Prebuilt] = []
    for item in step.messages:
        message = item.message() if isinstance(item, Prebuilt) else item
        headers = dict(message.headers)
        part_context.attach(headers, contexts)
        carried.append(message.evolve(headers=headers))
    step.messages = carried


def _drop_started(step: Plan) -> None:
    """Leave out body messages that already have a result record.

    ``chord_add`` gives the parts to the completing header again when it is
    redelivered (its first run may have died before the body was sent).  A
    body message the first run did send is either still in the broker,
    queued or leased (same id: the enqueue is a no-op), or has finished, and
    then it has a record (workers store before they acknowledge): sending it
    again would run it twice.  One ``get_many`` per fired chord.
    The window left (docs/decisions/0002-canvas.md): a body task with
    ``ignore_result`` leaves no record, and a first copy that finishes and
    is acknowledged between this read and the enqueue below runs again.
    """
    if not step.messages:
        return
    found = step.app.backend.get_many([m.id for m in step.messages])
    if any(stored is not None for stored in found):
        log.warning("chord body already started; not sending it again",
                    extra={"task_id": step.messages[0].id})
        step.messages = [m for m, stored in zip(step.messages, found, strict=True)
                         if stored is None]


def abandon(app: Conveyor, node: Canvas, tail: Tail, scope: Scope | None,
            exc: BaseException) -> None:
    """A follow-up that cannot be sent fails as if it had run and raised ``exc``."""
    first = result_of(app, node, None, FINAL).id
    log.error("could not send follow-up %r: %s", node, exc, extra={"task_id": first})
    mark_failed(app, ids_in([node.to_dict(), *tail]), exc, None)
    send_errbacks(app, entry_errbacks(node), Request(id=first, root_id=first), exc, None,
                  f"{first}:errback")
    if scope is not None:
        fail_scope(app, scope, first, exc, None)


def fail_scope(app: Conveyor, scope: Scope, failed_id: str, exc: BaseException,
               traceback: str | None, request: Request | None = None) -> None:
    """Fail a chord (or a group's error scope) once, then its outer scope."""
    if not app.backend.chord_fail(scope["id"], app.conf.result_expires):
        return
    if _is_join(scope):
        mark_failed(app, ids_in([scope["body"], *(scope.get("chain") or ())]), exc, traceback)
    failed = request or Request(id=failed_id, root_id=failed_id)
    send_errbacks(app, scope.get("errbacks") or (), failed, exc, traceback,
                  f"{scope['id']}:errback")
    outer = scope.get("chord")
    if outer is not None:
        fail_scope(app, outer, failed_id, exc, traceback, request)


def _add_callbacks(plan: Plan, callbacks: Sequence[dict[str, Any]], args: tuple[Any, ...],
                   seed: str) -> None:
    for index, data in enumerate(callbacks):
        step = plan.fork()
        try:
            node = Canvas.from_dict(data, plan.app).freeze(seeded_ids(f"{seed}:{index}"))
            launch(step, node, args, {}, (), None)
        except _BUILD_ERRORS as exc:
            log.error("could not send callback %s: %s", data.get("task", data), exc)
            continue
        plan.extend(step)


def send_errbacks(app: Conveyor, errbacks: Sequence[dict[str, Any]], request: Request,
                  exc: BaseException, traceback: str | None, seed: str) -> None:
    """Call current-style errbacks here; send old-style ones with the failed task's id.

    Which is which: :mod:`conveyor._errbacks`.  Sent ones get ids derived from ``seed``.
    """
    if not errbacks:
        return
    inline, sent = errbacks_module.split_styles(app, errbacks)
    errbacks_module.call_inline(inline, request, exc, traceback)
    if not sent:
        return
    failed_id = str(request.id)
    plan = Plan(app, parent_id=failed_id, root_id=request.root_id or failed_id)
    _add_callbacks(plan, sent, (failed_id,), seed)
    plan.commit()


def _failed_request(message: Message) -> Request:
    """What a current-style errback receives as ``request`` (Celery's task request)."""
    return Request.from_message(message, None, socket.gethostname())


def ids_in(nodes: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Every (task id, task name) a frozen canvas dict will produce results under."""
    found: list[tuple[str, str]] = []
    stack = list(nodes)
    while stack:
        node = stack.pop()
        kind = node.get("subtask_type")
        if kind is None:
            task_id = (node.get("options") or {}).get("task_id")
            if task_id:
                found.append((task_id, node["task"]))
        elif kind in ("chain", "group"):
            stack.extend(node.get("tasks") or ())
            group_id = (node.get("options") or {}).get("group_id")
            if kind == "group" and group_id:
                found.append((derived_id(group_id, "collect"), COLLECT_TASK))
        elif kind == "chord":
            stack.append(node["header"])
            if node.get("body"):
                stack.append(node["body"])
    return found


def mark_failed(app: Conveyor, pairs: Sequence[tuple[str, str]], exc: BaseException,
                traceback: str | None) -> None:
    """Store FAILURE, with the upstream error, for results that will never come."""
    if not pairs:
        return
    items = []
    for task_id, name in pairs:
        record = app.record_for(Request(id=task_id, task=name), states.FAILURE, exc=exc,
                                traceback=traceback)
        items.append((task_id, states.FAILURE, record.encode()))
    app.backend.set_many(items, app.conf.result_expires)


# -- values passed through the join ------------------------------------------------

def encode_value(app: Conveyor, value: Any, context: dict[str, str] | None = None) -> bytes:
    """A header value as the join stores it (the result serializer's encoding), with
    the header run's :mod:`part context <conveyor._part_context>` when there is one."""
    content_type = content_type_for(app.conf.result_serializer)
    encoded = encode_payload(value, content_type, "the task's return value")
    doc: dict[str, Any] = {"ct": content_type, "v": encoded}
    if context:
        doc["h"] = context
    return dumps_json(doc).encode()


def decode_value(app: Conveyor, payload: bytes) -> tuple[Any, dict[str, str]]:
    """A stored header value and its part context (``{}`` when it has none)."""
    doc = json.loads(payload)
    content_type = doc.get("ct", JSON)
    check_accepted(content_type, app.conf.result_accept_content or app.conf.accept_content)
    context = doc.get("h")
    return decode_payload(doc.get("v"), content_type), (
        context if isinstance(context, dict) else {})


__all__ = ["launch", "on_failure", "on_revoked", "on_success", "result_of", "send"]
