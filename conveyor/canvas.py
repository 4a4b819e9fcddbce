"""Canvas: task calls described as values, and compositions of them.

A :class:`Signature` is one task call; :class:`chain`, :class:`group`,
:class:`chord` and :class:`chunks` compose calls.  As in Celery, ``set``,
``link`` and ``link_error`` change the value they are called on (Celery code
calls them without reassigning); ``|``, ``clone`` and freezing make new
values.  Every canvas value turns into a JSON document with
:meth:`Canvas.to_dict` and back with :meth:`Canvas.from_dict`; compositions
carry a ``"subtask_type"`` key.

Sending a composition first *freezes* it: every task call and every group
gets its id, and options given to a composition are pushed down to the
calls they concern (``link_error`` of a chain to each step, ``link`` to the
last one, ``queue`` to every call, ``countdown`` to the calls sent first).
The frozen tree is what messages carry; the runtime that sends the
follow-up steps lives in :mod:`conveyor._workflow`.  See docs/canvas.md.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, cast, overload

from conveyor._message import new_id
from conveyor._typing import R

if TYPE_CHECKING:
    from typing_extensions import Self  # annotations only: not a runtime dependency

    from conveyor.app import Conveyor
    from conveyor.result import AsyncResult, GroupResult

IdSource = Callable[[], str]
"""Hands out task and group ids while a canvas is frozen."""

# Options that shape the workflow; everything else (queue, priority, expires,
# headers, time limits, ...) is inherited by every call inside a composition.
_STRUCTURAL = frozenset({
    "task_id", "group_id", "group_index", "link", "link_error", "countdown", "eta",
    "chain", "chord", "parent_id", "root_id", "idempotency_key",
})
_TIMING = ("countdown", "eta")

_ID_NAMESPACE = uuid.UUID("6d1c5a34-52b7-4a8e-9f0e-3c2b8a7d9e11")
COLLECT_TASK = "conveyor.collect"
MAP_TASK = "conveyor.map"
STARMAP_TASK = "conveyor.starmap"


def derived_id(seed: str, purpose: str) -> str:
    """A task id computed from another id: the same on every redelivery."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{seed}:{purpose}"))


def seeded_ids(seed: str) -> IdSource:
    """Deterministic ids, so a follow-up sent twice after a crash has one id."""
    counter = iter(range(1 << 62))
    return lambda: derived_id(seed, str(next(counter)))


def random_ids() -> str:
    """A fresh random id (UUID4 text, formatted without building a ``UUID``)."""
    return new_id()


class Canvas(abc.ABC):
    """What every canvas value shares: options, callbacks, ``|``, sending."""

    __slots__ = ("_app", "options")
    subtask_type: ClassVar[str | None] = None

    options: dict[str, Any]
    _app: Conveyor | None

    @property
    def app(self) -> Conveyor:
        """The app this value sends through (the current app if none was given)."""
        if self._app is not None:
            return self._app
        from conveyor._state import current_app

        return current_app()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Canvas) and type(other) is type(self) and (
            other.to_dict() == self.to_dict())

    __hash__ = None  # type: ignore[assignment]

    # -- building ----------------------------------------------------------
    @abc.abstractmethod
    def _with_options(self, options: dict[str, Any]) -> Self:
        """A copy of this value with ``options`` replacing its options."""

    def set(self, **options: Any) -> Self:
        """Change send options (``queue``, ``countdown``, ...) here; returns this value.

        In place, as Celery's ``set``: ``sig.set(queue="q")`` alone is enough.
        ``immutable=`` applies to the calls inside (Celery's ``set_immutable``).
        """
        immutable = options.pop("immutable", None)
        if immutable is not None:
            self.set_immutable(bool(immutable))
        self.options.update(_callbacks_as_dicts(options))
        return self

    def set_immutable(self, immutable: bool) -> None:
        """Make the calls inside ignore (or take) the previous result, as Celery does."""
        parts = getattr(self, "tasks", None)
        if isinstance(self, chord):
            parts = self.header.tasks  # as Celery: the body keeps its own setting
        for part in parts or ():
            part.set_immutable(immutable)

    def copy_with(self, **options: Any) -> Self:
        """A copy with send options changed; this value is left as it is."""
        return self._with_options({**self.options, **_callbacks_as_dicts(options)})

    def link(self, callback: Canvas) -> Canvas:
        """Send ``callback`` with the result on success; returns ``callback`` (as Celery).

        A signature dict (as messages carry them) is accepted too.
        """
        self.options["link"] = _merged(self.options.get("link"), [_as_dict(callback)])
        return callback

    def link_error(self, errback: Canvas) -> Canvas:
        """Run ``errback`` on failure; returns ``errback`` (as Celery).

        An errback task taking more than one positional argument is called
        in the worker as ``errback(request, exc, traceback)``; one taking a
        single argument is sent as a task with the failed task's id.
        """
        self.options["link_error"] = _merged(self.options.get("link_error"), [_as_dict(errback)])
        return errback

    def on_error(self, errback: Canvas) -> Self:
        """Like :meth:`link_error`, but returns this value, for ``sig.on_error(e).delay()``."""
        self.link_error(errback)
        return self

    def __or__(self, other: object) -> Canvas:
        if not isinstance(other, Canvas):
            return NotImplemented
        return _pipe(self, other)

    # -- sending -----------------------------------------------------------
    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult | GroupResult:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Any = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult | GroupResult:
        """Freeze, send what runs first in one broker batch, return the final result.

        ``args`` are prepended to the arguments of the calls that run first
        (every member of a group, the first step of a chain).  ``on_commit``
        works as for a single task: the whole batch waits for the caller's
        database transaction to commit.
        """
        from conveyor import _workflow as workflow

        on_commit = options.pop("on_commit", None)
        node = self.copy_with(**options) if options else self
        if self.app.conf.task_always_eager:
            return node.apply(args, kwargs)
        return workflow.send(self.app, node, tuple(args or ()), dict(kwargs or {}), on_commit)

    def apply(self, args: Any = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        """Run here and now, in order, as workers would (eager mode, see conveyor._eager)."""
        from conveyor import _eager as eager

        node = self.copy_with(**options) if options else self
        return eager.apply_canvas(self.app, node, tuple(args or ()), dict(kwargs or {}))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    # -- freezing (used by conveyor._workflow) -----------------------------
    @abc.abstractmethod
    def freeze(self, ids: IdSource = random_ids) -> Canvas:
        """A copy with every id assigned and composition options pushed down."""

    @abc.abstractmethod
    def _named(self, task_id: str) -> Canvas:
        """A copy whose final result gets ``task_id``."""

    # -- wire form ---------------------------------------------------------
    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` turns back into an equal value."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Conveyor | None = None) -> Canvas:
        """Rebuild any canvas value from :meth:`to_dict` output."""
        kind = data.get("subtask_type")
        builder = _KINDS.get(kind)
        if builder is None:
            raise ValueError(f"unknown canvas subtask_type {kind!r}")
        return builder(data, app)

    def _options_dict(self) -> dict[str, Any]:
        from conveyor._serialization import to_jsonable

        return dict(to_jsonable(self.options, f"{type(self).__name__} options"))


class Signature(Canvas, Generic[R]):
    """One task call: name, args, kwargs, send options and callbacks.

    For type checkers, generic in the task's return type: ``add.si(1, 2)``
    is a ``Signature[int]`` and its ``delay().get()`` an ``int``.
    """

    __slots__ = ("args", "immutable", "kwargs", "task")

    def __init__(self, task: Any, args: Any = (), kwargs: Mapping[str, Any] | None = None,
                 options: Mapping[str, Any] | None = None, immutable: bool = False,
                 app: Conveyor | None = None) -> None:
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"signature() needs a task or a task name, got {task!r}")
        self.task = name
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        self._app = app if app is not None else getattr(task, "_app", None)

    def __repr__(self) -> str:
        params = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        mark = "si" if self.immutable else "s"
        return f"{self.task}.{mark}({', '.join(params)})"

    @property
    def id(self) -> str | None:
        """The task id, once assigned (``set(task_id=...)`` or freezing)."""
        return self.options.get("task_id")

    # -- building ----------------------------------------------------------
    def _with_options(self, options: dict[str, Any]) -> Signature[R]:
        return Signature(self.task, self.args, self.kwargs, options, self.immutable, self._app)

    @classmethod
    def _call(cls, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], immutable: bool,
              app: Conveyor | None) -> Signature:
        """``task.s(...)``: a new call from arguments that need no normalizing.

        ``args`` and ``kwargs`` come straight from ``*args``/``**kwargs``: a
        fresh tuple and dict owned by the signature.  Users build thousands
        of these for one group.
        """
        sig = object.__new__(cls)
        sig.task = name
        sig.args = args
        sig.kwargs = kwargs
        sig.options = {}
        sig.immutable = immutable
        sig._app = app
        return sig

    def _replaced_options(self, options: dict[str, Any]) -> Signature[R]:
        """A copy with ``options`` (already normalized: links as dicts) taking their place.

        Freezing a group copies every member; going through ``__init__``
        would normalize arguments that are already normal, 20,000 times.
        """
        copy = object.__new__(type(self))
        copy.task = self.task
        copy.args = self.args  # a tuple: shared safely
        copy.kwargs = dict(self.kwargs) if self.kwargs else {}
        copy.options = options
        copy.immutable = self.immutable
        copy._app = self._app
        return copy

    def clone(self, args: Any = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Signature[R]:
        """A copy with partial arguments applied (as Celery's ``clone``).

        ``args`` are put before the signature's own and ``kwargs`` merged,
        unless the signature is immutable; ``options`` are merged either way.
        """
        call_args, call_kwargs = self.partial(tuple(args or ()), dict(kwargs or {}))
        return Signature(
            self.task,
            call_args,
            call_kwargs,
            {**self.options, **_callbacks_as_dicts(options)},
            self.immutable,
            self._app,
        )

    def set(self, immutable: bool | None = None, **options: Any) -> Signature[R]:
        """Change send options (and ``immutable``) here; returns this signature."""
        if immutable is not None:
            self.immutable = immutable
        return super().set(**options)

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = immutable

    def partial(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[
            tuple[Any, ...], dict[str, Any]]:
        """The call's arguments given a previous result: prepended unless immutable."""
        if self.immutable:
            return self.args, self.kwargs
        return tuple(args) + self.args, {**self.kwargs, **kwargs}

    # -- sending -----------------------------------------------------------
    def apply_async(self, args: Any = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult[R]:
        """Send; partial args are prepended unless the signature is immutable."""
        call_args, call_kwargs = self.partial(tuple(args or ()), dict(kwargs or {}))
        task = self.app.tasks.get(self.task)
        merged = {**self.options, **options}
        if task is not None:
            return task.apply_async(call_args, call_kwargs, **merged)
        return self.app.send_task(self.task, call_args, call_kwargs, **merged)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return self.apply_async(args, kwargs)

    def apply(self, args: Any = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        """Run the call here as a worker would (``Task.apply``); returns an ``EagerResult``."""
        call_args, call_kwargs = self.partial(tuple(args or ()), dict(kwargs or {}))
        return self.app.get_task(self.task).apply(call_args, call_kwargs,
                                                  **{**self.options, **options})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here, now; partial arguments as :meth:`clone` applies them."""
        task = self.app.get_task(self.task)
        call_args, call_kwargs = self.partial(args, kwargs)
        return task(*call_args, **call_kwargs)

    # -- freezing ------------------------------------------------------------
    def freeze(self, ids: IdSource = random_ids) -> Signature[R]:
        return self if "task_id" in self.options else self.copy_with(task_id=ids())

    def _named(self, task_id: str) -> Signature[R]:
        return self.copy_with(task_id=task_id)

    # -- wire form ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from conveyor._serialization import to_jsonable

        return {
            "task": self.task,
            "args": to_jsonable(list(self.args), f"signature {self.task} args"),
            "kwargs": to_jsonable(self.kwargs, f"signature {self.task} kwargs"),
            "options": to_jsonable(self.options, f"signature {self.task} options"),
            "immutable": self.immutable,
        }

    @classmethod
    def _build(cls, data: Mapping[str, Any], app: Conveyor | None) -> Signature:
        from conveyor._serialization import from_jsonable

        return cls(
            data["task"],
            from_jsonable(data.get("args", [])),
            from_jsonable(data.get("kwargs", {})),
            from_jsonable(data.get("options", {})),
            bool(data.get("immutable", False)),
            app,
        )


class chain(Canvas):
    """Steps run one after another; each receives the previous step's result.

    ``chain(a.s(), b.s(), c.s())`` or ``a.s() | b.s() | c.s()``.  A group
    in the middle waits for all its members (it becomes a chord whose body
    is the next step); a group at the end receives the result in each member.
    """

    __slots__ = ("tasks",)
    subtask_type = "chain"

    def __init__(self, *tasks: Canvas | Iterable[Canvas], options: Mapping[str, Any] | None = None,
                 app: Conveyor | None = None) -> None:
        self.tasks: tuple[Canvas, ...] = _steps(tasks)
        self.options = dict(options or {})
        self._app = app if app is not None else _app_of(self.tasks)

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) or "chain()"

    def _with_options(self, options: dict[str, Any]) -> chain:
        return chain(*self.tasks, options=options, app=self._app)

    def freeze(self, ids: IdSource = random_ids) -> chain:
        """Push options to the steps (``link`` to the last, ``link_error`` to each)."""
        if not self.tasks:
            raise ValueError("an empty chain() has nothing to run")
        own = self.options
        steps = [_inherit(step, own) for step in self.tasks]
        steps[0] = _timing(steps[0], own)
        if own.get("link_error"):
            steps = [_with_callbacks(s, "link_error", own["link_error"]) for s in steps]
        if own.get("link"):
            steps[-1] = _with_callbacks(steps[-1], "link", own["link"])
        if own.get("task_id"):
            steps[-1] = steps[-1]._named(own["task_id"])
        return chain(*[step.freeze(ids) for step in steps], app=self._app)

    def _named(self, task_id: str) -> chain:
        return self.copy_with(task_id=task_id)

    def to_dict(self) -> dict[str, Any]:
        return {"subtask_type": "chain", "tasks": [t.to_dict() for t in self.tasks],
                "options": self._options_dict()}

    @classmethod
    def _build(cls, data: Mapping[str, Any], app: Conveyor | None) -> chain:
        tasks = [Canvas.from_dict(t, app) for t in data.get("tasks", [])]
        return cls(*tasks, options=_options_from(data), app=app)


class group(Canvas):
    """Calls run in parallel; the result lists their values in the group's order.

    ``group(a.s(1), a.s(2))``, ``group([...])`` or ``group(generator)``.
    ``link_error`` on a group is sent once, for its first failing member.
    """

    __slots__ = ("tasks",)
    subtask_type = "group"

    def __init__(self, *tasks: Canvas | Iterable[Canvas], options: Mapping[str, Any] | None = None,
                 app: Conveyor | None = None) -> None:
        self.tasks: tuple[Canvas, ...] = _members(tasks)
        self.options = dict(options or {})
        self._app = app if app is not None else _app_of(self.tasks)

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def id(self) -> str | None:
        return self.options.get("group_id")

    def _with_options(self, options: dict[str, Any]) -> group:
        return group(self.tasks, options=options, app=self._app)

    def apply_async(self, args: Any = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> GroupResult:
        return cast("GroupResult", super().apply_async(args, kwargs, **options))

    def delay(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)

    def freeze(self, ids: IdSource = random_ids) -> group:
        """Assign the group id; options except ``link_error`` go to each member."""
        own = self.options
        group_id = own.get("group_id") or own.get("task_id") or ids()
        members: list[Canvas] = []
        # Whether any option passes down to the members (most groups have none).
        shaped = own.get("link") or any(
            key not in _STRUCTURAL or (key in _TIMING and own[key] is not None) for key in own)
        for index, member in enumerate(self.tasks):
            if shaped:
                member = _timing(_inherit(member, own), own)
                if own.get("link"):
                    member = _with_callbacks(member, "link", own["link"])
            if isinstance(member, Signature):
                task_id = member.options.get("task_id") or ids()
                members.append(member._replaced_options({**member.options, "group_id": group_id,
                                                         "group_index": index,
                                                         "task_id": task_id}))
            else:
                members.append(member.freeze(ids))
        kept = {"group_id": group_id}
        if own.get("link_error"):
            kept["link_error"] = list(own["link_error"])
        return group(members, options=kept, app=self._app)

    def _named(self, task_id: str) -> group:
        return self.copy_with(group_id=task_id)

    def to_dict(self) -> dict[str, Any]:
        return {"subtask_type": "group", "tasks": [t.to_dict() for t in self.tasks],
                "options": self._options_dict()}

    @classmethod
    def _build(cls, data: Mapping[str, Any], app: Conveyor | None) -> group:
        tasks = [Canvas.from_dict(t, app) for t in data.get("tasks", [])]
        return cls(tasks, options=_options_from(data), app=app)


_Group = group  # ``chunks.group`` (a method) hides the class inside ``chunks``


class chord(Canvas):
    """A group (the header) and a body called once with the header's results.

    ``chord(header, body)`` or ``group(...) | body``.  The body receives the
    list of header results, in header order; a failing header member fails
    the chord instead.  ``chord(header)(body)`` sends at once.
    """

    __slots__ = ("body", "header")
    subtask_type = "chord"

    def __init__(self, header: group | Iterable[Canvas], body: Canvas | None = None,
                 options: Mapping[str, Any] | None = None, app: Conveyor | None = None) -> None:
        self.header = header if isinstance(header, group) else group(header)
        self.body = body
        self.options = dict(options or {})
        found = app or self.header._app or (body._app if body is not None else None)
        self._app = found

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def _with_options(self, options: dict[str, Any]) -> chord:
        return chord(self.header, self.body, options, self._app)

    def __call__(self, body: Canvas | None = None, **options: Any) -> Any:
        """``chord(header)(body)`` sends the chord with that body."""
        target = self if body is None else chord(self.header, body, self.options, self._app)
        return target.apply_async(**options)

    def freeze(self, ids: IdSource = random_ids) -> chord:
        """Header keeps its id; ``task_id``, ``link`` and ``link_error`` go to the body."""
        if self.body is None:
            raise ValueError("this chord has no body; use chord(header, body)")
        own = self.options
        header = _timing(_inherit(self.header, own), own)
        if own.get("group_id"):
            header = header.copy_with(group_id=own["group_id"])
        body = _inherit(self.body, own)
        for key in ("link", "link_error"):
            if own.get(key):
                body = _with_callbacks(body, key, own[key])
        if own.get("task_id"):
            body = body._named(own["task_id"])
        frozen_header = header.freeze(ids)
        assert isinstance(frozen_header, group)
        return chord(frozen_header, body.freeze(ids), app=self._app)

    def _named(self, task_id: str) -> chord:
        return self.copy_with(task_id=task_id)

    def to_dict(self) -> dict[str, Any]:
        return {"subtask_type": "chord", "header": self.header.to_dict(),
                "body": self.body.to_dict() if self.body is not None else None,
                "options": self._options_dict()}

    @classmethod
    def _build(cls, data: Mapping[str, Any], app: Conveyor | None) -> chord:
        header = Canvas.from_dict(data["header"], app)
        assert isinstance(header, group)
        body = Canvas.from_dict(data["body"], app) if data.get("body") else None
        return cls(header, body, _options_from(data), app)


class chunks(Canvas):
    """Many small calls packed into few messages: ``n`` argument tuples per message.

    ``chunks(add, [(1, 2), (3, 4), ...], 100)`` sends one ``conveyor.starmap``
    message per 100 tuples; the result is a group result of lists.
    """

    __slots__ = ("items", "n", "task")
    subtask_type = "chunks"

    def __init__(self, task: Any, items: Iterable[Any], n: int,
                 options: Mapping[str, Any] | None = None, app: Conveyor | None = None) -> None:
        if n < 1:
            raise ValueError(f"chunks() needs a chunk size of at least 1, got {n}")
        self.task = _task_name(task)
        self.items = [tuple(item) for item in items]
        self.n = n
        self.options = dict(options or {})
        self._app = app if app is not None else getattr(task, "_app", None)

    def __repr__(self) -> str:
        return f"chunks({self.task}, {len(self.items)} items, {self.n})"

    def _with_options(self, options: dict[str, Any]) -> chunks:
        return chunks(self.task, self.items, self.n, options, self._app)

    def group(self) -> _Group:
        """The group of ``starmap`` calls this sends."""
        parts = [xstarmap(self.task, self.items[i:i + self.n], app=self._app)
                 for i in range(0, len(self.items), self.n)]
        return _Group(parts, options=self.options, app=self._app)

    def apply_async(self, args: Any = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> GroupResult:
        return self.group().apply_async(args, kwargs, **options)

    def delay(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)

    def freeze(self, ids: IdSource = random_ids) -> _Group:
        return self.group().freeze(ids)

    def _named(self, task_id: str) -> chunks:
        return self.copy_with(group_id=task_id)

    def to_dict(self) -> dict[str, Any]:
        from conveyor._serialization import to_jsonable

        return {"subtask_type": "chunks", "task": self.task, "n": self.n,
                "items": to_jsonable([list(i) for i in self.items], "chunks items"),
                "options": self._options_dict()}

    @classmethod
    def _build(cls, data: Mapping[str, Any], app: Conveyor | None) -> chunks:
        from conveyor._serialization import from_jsonable

        return cls(data["task"], from_jsonable(data["items"]), int(data["n"]),
                   _options_from(data), app)


def xmap(task: Any, items: Iterable[Any], app: Conveyor | None = None) -> Signature:
    """One message that calls ``task(item)`` for each item; returns the list of results."""
    return Signature(MAP_TASK, (_task_name(task), list(items)),
                     app=app or getattr(task, "_app", None))


def xstarmap(task: Any, items: Iterable[Any], app: Conveyor | None = None) -> Signature:
    """One message that calls ``task(*item)`` for each item; returns the list of results."""
    return Signature(STARMAP_TASK, (_task_name(task), [list(i) for i in items]),
                     app=app or getattr(task, "_app", None))


@overload
def signature(task: Signature, args: Any = (), kwargs: Mapping[str, Any] | None = None,
              options: Mapping[str, Any] | None = None, **extra: Any) -> Signature: ...
@overload
def signature(task: Mapping[str, Any] | Canvas, args: Any = (),
              kwargs: Mapping[str, Any] | None = None,
              options: Mapping[str, Any] | None = None, **extra: Any) -> Canvas: ...
@overload
def signature(task: Any, args: Any = (), kwargs: Mapping[str, Any] | None = None,
              options: Mapping[str, Any] | None = None, **extra: Any) -> Signature: ...


def signature(task: Any, args: Any = (), kwargs: Mapping[str, Any] | None = None,
              options: Mapping[str, Any] | None = None, **extra: Any) -> Canvas:
    """Celery's ``signature(name_or_task, args, kwargs, options, immutable=, app=)``.

    Other keywords are send options, as in Celery.  A dict (a signature as
    messages carry it) is rebuilt.
    """
    if isinstance(task, Signature):
        return task.clone()
    if isinstance(task, Canvas):
        return task
    if isinstance(task, Mapping):
        return Canvas.from_dict(task, extra.get("app"))
    immutable = bool(extra.pop("immutable", False))
    app = extra.pop("app", None)
    return Signature(task, args, kwargs, {**(options or {}), **extra}, immutable, app)


def maybe_signature(value: Any, app: Conveyor | None = None) -> Canvas | None:
    """Celery's ``maybe_signature``: None stays None, anything else as :func:`signature`."""
    if value is None or isinstance(value, Canvas):
        return value
    if isinstance(value, Mapping):
        return Canvas.from_dict(value, app)
    return signature(value, app=app)


# -- helpers ------------------------------------------------------------------

_KINDS: dict[str | None, Callable[[Mapping[str, Any], Any], Canvas]] = {
    None: Signature._build,
    "chain": chain._build,
    "group": group._build,
    "chord": chord._build,
    "chunks": chunks._build,
}


def _pipe(left: Canvas, right: Canvas) -> Canvas:
    """``left | right``: a chord for ``group | call``, else one flat chain."""
    if isinstance(left, group) and not isinstance(right, group):
        return chord(left, right, app=left._app)
    if isinstance(left, chord) and left.body is None:
        return chord(left.header, right, left.options, left._app)
    return chain(*_flat(left), *_flat(right))


def _flat(node: Canvas) -> tuple[Canvas, ...]:
    if isinstance(node, chain) and not node.options:
        return node.tasks
    return (node,)


def _steps(tasks: tuple[Canvas | Iterable[Canvas], ...]) -> tuple[Canvas, ...]:
    """``chain(a, b)`` and ``chain([a, b])`` alike; nested option-less chains flatten."""
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas):
        tasks = tuple(tasks[0])
    steps: list[Canvas] = []
    for task in tasks:
        if not isinstance(task, Canvas):
            raise TypeError(f"chain() takes signatures, got {task!r}")
        steps.extend(_flat(task))
    return tuple(steps)


def _members(tasks: tuple[Canvas | Iterable[Canvas], ...]) -> tuple[Canvas, ...]:
    """``group(a, b)``, ``group([a, b])`` and ``group(generator)`` alike."""
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas):
        tasks = tuple(tasks[0])
    for task in tasks:
        if not isinstance(task, Canvas):
            raise TypeError(f"group() takes signatures, got {task!r}")
    return tuple(tasks)  # type: ignore[arg-type]


def _app_of(tasks: Sequence[Canvas]) -> Conveyor | None:
    return next((t._app for t in tasks if t._app is not None), None)


def _task_name(task: Any) -> str:
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"expected a task or a task name, got {task!r}")
    return name


def _options_from(data: Mapping[str, Any]) -> dict[str, Any]:
    from conveyor._serialization import from_jsonable

    return dict(from_jsonable(data.get("options") or {}))


def _merged(existing: Any, extra: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Callback lists joined without duplicates (a chain's errback is added once)."""
    out = [dict(e) for e in existing or ()]
    for item in extra:
        if item not in out:
            out.append(dict(item))
    return out


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Canvas):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"expected a signature or a signature dict, got {value!r}")


def _callbacks_as_dicts(options: dict[str, Any]) -> dict[str, Any]:
    """``link=sig`` or ``link=[sig, ...]`` kept as a list of dicts, so values stay JSON."""
    for key in ("link", "link_error"):
        value = options.get(key)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        options[key] = [item.to_dict() if isinstance(item, Canvas) else dict(item)
                        for item in items]
    return options


def _with_callbacks(node: Canvas, key: str, callbacks: Sequence[dict[str, Any]]) -> Canvas:
    return node.copy_with(**{key: _merged(node.options.get(key), callbacks)})


def _inherit(node: Canvas, options: Mapping[str, Any]) -> Canvas:
    """Plain send options of a composition apply to its parts, unless they set their own."""
    extra = {k: v for k, v in options.items() if k not in _STRUCTURAL and k not in node.options}
    return node.copy_with(**extra) if extra else node


def _timing(node: Canvas, options: Mapping[str, Any]) -> Canvas:
    """``countdown``/``eta`` delay what is sent first, not every later step."""
    extra = {k: options[k] for k in _TIMING if options.get(k) is not None
             and k not in node.options}
    return node.copy_with(**extra) if extra else node


__all__ = [
    "COLLECT_TASK",
    "MAP_TASK",
    "STARMAP_TASK",
    "Canvas",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "derived_id",
    "group",
    "maybe_signature",
    "seeded_ids",
    "signature",
    "xmap",
    "xstarmap",
]
