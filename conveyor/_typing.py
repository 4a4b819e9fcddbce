"""Type variables and decorator types that let type checkers follow a task's signature.

``@app.task`` turns ``def add(x: int, y: int) -> int`` into a ``Task[[int, int], int]``:
the parameters (a ``ParamSpec``) check ``add(...)``, ``add.delay(...)`` and
``add.si(...)``, and the return type flows to ``AsyncResult[int].get()``.
Nothing here runs: the variables exist at run time only because
``Generic[...]`` needs them, and the protocols only describe what the
decorators return.  See docs/typing.md for what is checked and what is not.

Defaults (PEP 696) make a bare ``Task`` mean ``Task[..., Any]`` and a bare
``AsyncResult`` mean ``AsyncResult[Any]``, so annotations written before
tasks were generic stay valid under ``--disallow-any-generics``.  Defaults
need ``typing_extensions`` before Python 3.13; type checkers always have it
(typeshed), and at run time the plain ``typing`` variables serve.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, Protocol, overload

if TYPE_CHECKING:
    from typing_extensions import ParamSpec, TypeVar

    from conveyor.task import Task

    P = ParamSpec("P", default=...)
    R = TypeVar("R", covariant=True, default=Any)
else:
    from typing import ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R", covariant=True)

# Method-level variables (a decorator's function, a self-type's parts).
Q = ParamSpec("Q")
T = TypeVar("T")
A = TypeVar("A")
TaskT = TypeVar("TaskT", bound="Task[..., Any]")  # register_task returns what it was given


if TYPE_CHECKING:
    class AsyncFunctionTask(Task[P, R]):
        """A task whose body is ``async def``: its result is what the coroutine returns.

        Exists for type checkers only (at run time it is a plain ``Task``):
        ``delay()`` gives ``AsyncResult[R]`` while calling the task directly
        gives the coroutine, as the function does.
        """

        def __call__(  # type: ignore[override]
            self, *args: P.args, **kwargs: P.kwargs
        ) -> Coroutine[Any, Any, R]: ...


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns: a function in, a task with its signature out."""

    @overload
    def __call__(self, fn: Callable[Q, Coroutine[Any, Any, T]]) -> AsyncFunctionTask[Q, T]: ...
    @overload
    def __call__(self, fn: Callable[Q, T]) -> Task[Q, T]: ...


class BoundTaskDecorator(Protocol):
    """What ``@app.task(bind=True, ...)`` returns: the first parameter (the task) is dropped."""

    @overload
    def __call__(
        self, fn: Callable[Concatenate[Any, Q], Coroutine[Any, Any, T]]
    ) -> AsyncFunctionTask[Q, T]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, Q], T]) -> Task[Q, T]: ...


class AnyTaskDecorator(Protocol):
    """What ``@app.task(bind=flag)`` returns when ``flag`` is not a literal: unchecked."""

    def __call__(self, fn: Callable[..., Any]) -> Task[..., Any]: ...
