"""Signatures: a task call described as a value, to send now or later.

(Chains, groups and chords build on :class:`Signature`; see docs/canvas.md.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.result import AsyncResult


class Signature:
    """An immutable task call: name, args, kwargs, send options, callbacks."""

    __slots__ = ("_app", "args", "immutable", "kwargs", "options", "task")

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

    @property
    def app(self) -> Conveyor:
        if self._app is not None:
            return self._app
        from conveyor._state import current_app

        return current_app()

    def __repr__(self) -> str:
        params = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        mark = "si" if self.immutable else "s"
        return f"{self.task}.{mark}({', '.join(params)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]

    # -- building ----------------------------------------------------------
    def clone(self, args: Any = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Signature:
        """A copy; ``args`` are appended and ``kwargs``/``options`` merged."""
        return Signature(
            self.task,
            self.args + tuple(args or ()),
            {**self.kwargs, **(kwargs or {})},
            {**self.options, **options},
            self.immutable,
            self._app,
        )

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """A copy with send options changed (``queue``, ``countdown``, ...)."""
        copy = self.clone(**options)
        if immutable is not None:
            copy.immutable = immutable
        return copy

    def link(self, callback: Signature) -> Signature:
        """A copy that calls ``callback`` with this task's result on success."""
        return self.set(link=[*self.options.get("link", []), callback.to_dict()])

    def link_error(self, errback: Signature) -> Signature:
        """A copy that calls ``errback`` with this task's id when it fails."""
        return self.set(link_error=[*self.options.get("link_error", []), errback.to_dict()])

    # -- sending -----------------------------------------------------------
    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Any = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Send; partial args are prepended unless the signature is immutable."""
        call_args = self.args if self.immutable else tuple(args or ()) + self.args
        call_kwargs = self.kwargs if self.immutable else {**self.kwargs, **(kwargs or {})}
        task = self.app.tasks.get(self.task)
        merged = {**self.options, **options}
        if task is not None:
            return task.apply_async(call_args, call_kwargs, **merged)
        return self.app.send_task(self.task, call_args, call_kwargs, **merged)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here, now."""
        task = self.app.get_task(self.task)
        return task(*(self.args + args), **{**self.kwargs, **kwargs})

    # -- wire form ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from conveyor.serialization import to_jsonable

        return {
            "task": self.task,
            "args": to_jsonable(list(self.args), f"signature {self.task} args"),
            "kwargs": to_jsonable(self.kwargs, f"signature {self.task} kwargs"),
            "options": to_jsonable(self.options, f"signature {self.task} options"),
            "immutable": self.immutable,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Conveyor | None = None) -> Signature:
        from conveyor.serialization import from_jsonable

        return cls(
            data["task"],
            from_jsonable(data.get("args", [])),
            from_jsonable(data.get("kwargs", {})),
            from_jsonable(data.get("options", {})),
            bool(data.get("immutable", False)),
            app,
        )


def signature(task: Any, args: Any = (), kwargs: Mapping[str, Any] | None = None,
              options: Mapping[str, Any] | None = None, **extra: Any) -> Signature:
    """Celery's ``signature(name_or_task, args, kwargs, options)``."""
    if isinstance(task, Signature):
        return task.clone()
    if isinstance(task, Mapping):
        return Signature.from_dict(task)
    return Signature(task, args, kwargs, {**(options or {}), **extra})
