"""Tasks: a function plus its options, and the ways to call it.

``@app.task`` and ``@shared_task`` wrap a function in a :class:`Task`.
Calling the task runs the function here and now; ``.delay()`` and
``.apply_async()`` send a message for a worker.  ``Task`` is a plain class
holding a :class:`TaskOptions`; there is no metaclass and no per-task
subclass generated at run time.
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.context import current_request
from conveyor.exceptions import ConfigurationError, MaxRetriesExceededError, Retry
from conveyor.retry import Backoff, backoff_for

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.canvas import Signature
    from conveyor.canvas import chunks as Chunks
    from conveyor.result import AsyncResult

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_MAX_SHAPES = 64  # call shapes remembered per task as fitting its signature


def parse_rate_limit(value: str | float | None) -> float | None:
    """``"10/s"``, ``"100/m"``, ``"5/h"`` or a number per second -> tasks per second."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = _RATE.match(value)
    if not match:
        raise ConfigurationError(
            f"rate_limit {value!r} is not understood; write it like '10/s', '100/m' or '5/h'"
        )
    return float(match.group(1)) / _PER[match.group(2)]


@dataclass(frozen=True)
class TaskOptions:
    """The decorator options; None means "use the app setting"."""

    name: str
    bind: bool = False
    max_retries: int | None = -1  # -1: task_default_max_retries; None: retry forever
    default_retry_delay: float | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = field(default_factory=dict)
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    soft_time_limit: float | None = None
    time_limit: float | None = None
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    acks_on_failure: bool | None = None  # None: acks_on_failure_or_timeout
    acks_on_timeout: bool | None = None  # None: acks_on_failure_or_timeout
    reject_on_worker_lost: bool | None = None
    track_started: bool | None = None
    queue: str | None = None
    priority: int | None = None
    rate_limit: str | float | None = None
    global_rate_limit: str | float | None = None  # shared by every worker (Conveyor's own)
    ignore_result: bool | None = None
    expires: float | None = None
    serializer: str | None = None
    max_deliveries: int | None = None
    typing: bool = True

    def __post_init__(self) -> None:
        parse_rate_limit(self.rate_limit)
        parse_rate_limit(self.global_rate_limit)
        if self.priority is not None and not 0 <= self.priority <= 9:
            raise ConfigurationError(
                f"task {self.name}: priority must be 0..9, got {self.priority}"
            )
        if not isinstance(self.autoretry_for, tuple):
            object.__setattr__(self, "autoretry_for", tuple(self.autoretry_for))

    @classmethod
    def accepted(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @property
    def backoff(self) -> Backoff | None:
        return backoff_for(self.retry_backoff, self.retry_backoff_max, self.retry_jitter)


class Task:
    """A registered task.  Attribute names follow Celery's where they overlap."""

    def __init__(self, fn: Callable[..., Any], options: TaskOptions,
                 app: Conveyor | None = None) -> None:
        self.fn = fn
        self.options = options
        self._app = app
        self._signature: tuple[Callable[..., Any], inspect.Signature | None] | None = None
        self._fitting_shapes: set[tuple[Any, ...]] = set()  # see _check_arguments
        functools.update_wrapper(self, fn)
        self.is_async = inspect.iscoroutinefunction(fn)

    # -- identity ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self.options.name

    @property
    def app(self) -> Conveyor:
        """The owning app; a shared task answers with the current app."""
        if self._app is not None:
            return self._app
        from conveyor._state import current_app

        return current_app()

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # Celery exposes options as task attributes; so do we (read-only).
    @property
    def max_retries(self) -> int | None:
        if self.options.max_retries == -1:
            return self.app.conf.task_default_max_retries
        return self.options.max_retries

    @property
    def default_retry_delay(self) -> float:
        delay = self.options.default_retry_delay
        return self.app.conf.task_default_retry_delay if delay is None else delay

    @property
    def acks_late(self) -> bool:
        late = self.options.acks_late
        return self.app.conf.task_acks_late if late is None else late

    @property
    def acks_on_failure_or_timeout(self) -> bool:
        acks = self.options.acks_on_failure_or_timeout
        return self.app.conf.task_acks_on_failure_or_timeout if acks is None else acks

    @property
    def acks_on_failure(self) -> bool:
        """Celery 5.6's split of ``acks_on_failure_or_timeout``: option, setting, then it."""
        for value in (self.options.acks_on_failure, self.app.conf.task_acks_on_failure):
            if value is not None:
                return value
        return self.acks_on_failure_or_timeout

    @property
    def acks_on_timeout(self) -> bool:
        for value in (self.options.acks_on_timeout, self.app.conf.task_acks_on_timeout):
            if value is not None:
                return value
        return self.acks_on_failure_or_timeout

    @property
    def reject_on_worker_lost(self) -> bool:
        reject = self.options.reject_on_worker_lost
        return self.app.conf.task_reject_on_worker_lost if reject is None else reject

    @property
    def track_started(self) -> bool:
        track = self.options.track_started
        return self.app.conf.task_track_started if track is None else track

    @property
    def ignore_result(self) -> bool:
        ignore = self.options.ignore_result
        return self.app.conf.task_ignore_result if ignore is None else ignore

    @property
    def soft_time_limit(self) -> float | None:
        return self.options.soft_time_limit or self.app.conf.task_soft_time_limit

    @property
    def time_limit(self) -> float | None:
        return self.options.time_limit or self.app.conf.task_time_limit

    @property
    def request(self) -> Any:
        """The request being run (a :class:`~conveyor.context.Request`)."""
        return current_request()

    # -- running ----------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function in this process, now (no message, no worker)."""
        if self.options.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    run = __call__

    # -- sending ----------------------------------------------------------
    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send with positional and keyword arguments and default options."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> AsyncResult:
        """Send a message; ``options`` as in :meth:`Conveyor.send_task`."""
        if self.options.typing:
            self._check_arguments(tuple(args or ()), dict(kwargs or {}))
        return self.app.send_task(self.name, args, kwargs, _task=self, **options)

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Like :meth:`delay`, sent when the open database transaction commits.

        A rolled-back transaction sends nothing; outside a transaction this
        sends now.  Arguments are checked here, at the call.
        """
        return self.apply_async(args, kwargs, on_commit=True)

    def apply_async_on_commit(self, args: Any = None, kwargs: Any = None,
                              **options: Any) -> AsyncResult:
        """Like :meth:`apply_async`, sent when the open database transaction commits."""
        return self.apply_async(args, kwargs, on_commit=True, **options)

    def _check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Catch a wrong call at the caller, not in a worker minutes later."""
        signature = self._fn_signature()
        if signature is None:
            return
        # Binding depends only on how many positional arguments there are and
        # on the keyword names, so each shape of call that fits is checked once.
        shape = (self.options.bind, len(args), *kwargs)
        if shape in self._fitting_shapes:
            return
        try:
            if self.options.bind:
                signature.bind(None, *args, **kwargs)
            else:
                signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{signature}: {exc}") from None
        if len(self._fitting_shapes) < _MAX_SHAPES:
            self._fitting_shapes.add(shape)

    def _fn_signature(self) -> inspect.Signature | None:
        """``fn``'s signature, kept: computing it costs more than building the message."""
        if self._signature is None or self._signature[0] is not self.fn:
            try:
                signature: inspect.Signature | None = inspect.signature(self.fn)
            except (TypeError, ValueError):
                signature = None
            self._signature = (self.fn, signature)
            self._fitting_shapes = set()
        return self._signature[1]

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A partial signature: a chain prepends the previous result to ``args``."""
        from conveyor.canvas import Signature

        return Signature(self.name, args, kwargs, app=self._app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: ignores the previous result in a chain."""
        from conveyor.canvas import Signature

        return Signature(self.name, args, kwargs, immutable=True, app=self._app)

    def signature(self, args: Any = None, kwargs: Any = None, **options: Any) -> Signature:
        from conveyor.canvas import Signature

        immutable = bool(options.pop("immutable", False))
        return Signature(self.name, tuple(args or ()), dict(kwargs or {}), options,
                         immutable=immutable, app=self._app)

    def map(self, items: Any) -> Signature:
        """One message calling this task for each item (``canvas.xmap``)."""
        from conveyor.canvas import xmap

        return xmap(self, items)

    def starmap(self, items: Any) -> Signature:
        """One message calling this task with each argument tuple (``canvas.xstarmap``)."""
        from conveyor.canvas import xstarmap

        return xstarmap(self, items)

    def chunks(self, items: Any, n: int) -> Chunks:
        """Argument tuples split into messages of ``n`` calls each (``canvas.chunks``)."""
        from conveyor.canvas import chunks

        return chunks(self, items, n)

    def AsyncResult(self, task_id: str) -> AsyncResult:
        return self.app.AsyncResult(task_id)

    # -- inside a running task ---------------------------------------------
    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None,
              throw: bool = True, eta: datetime | None = None, countdown: float | None = None,
              max_retries: int | None = None, **options: Any) -> Retry:
        """Schedule the next attempt in the broker, then raise :class:`Retry`.

        The new message is written before the running one is acknowledged,
        so a crash in between can run the task twice but never loses it.
        """
        request = self.request
        if request.called_directly or request.message is None:
            raise exc or Retry("retry() called outside a worker", exc=exc)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}]: max_retries={limit} reached "
                f"(args={request.args!r}, kwargs={request.kwargs!r})"
            )
        when = self._retry_eta(eta, countdown, request.retries)
        self.app.resend_for_retry(request, when, args, kwargs, options)
        self.app.store_state(request, states.RETRY, exc=exc)
        signal = Retry(exc=exc, when=when - time.time())
        if throw:
            raise signal
        return signal

    def _retry_eta(self, eta: datetime | None, countdown: float | None, retries: int) -> float:
        if eta is not None:
            from conveyor.message import moment_timestamp  # naive: as at send

            conf = self.app.conf
            return moment_timestamp(eta, "eta", conf.enable_utc, conf.timezone)
        if countdown is None:
            backoff = self.options.backoff
            countdown = backoff.countdown(retries) if backoff else self.default_retry_delay
        return time.time() + countdown

    def update_state(self, task_id: str | None = None, state: str = states.PROGRESS,
                     meta: Any = None) -> None:
        """Record progress (or any custom state) for the running task."""
        self.app.update_state(task_id or self.request.id, state, meta, request=self.request)

    def with_options(self, **changes: Any) -> Task:
        """A copy with different options (used by tests and the Django contrib)."""
        return Task(self.fn, replace(self.options, **changes), self._app)


def task_options(fn: Callable[..., Any], default_name: str, given: dict[str, Any]) -> TaskOptions:
    """Validate decorator keywords, naming the unknown ones."""
    unknown = set(given) - TaskOptions.accepted()
    if unknown:
        raise ConfigurationError(
            f"task {getattr(fn, '__qualname__', fn)!r}: unknown option(s) "
            f"{', '.join(sorted(unknown))}; known: {', '.join(sorted(TaskOptions.accepted()))}"
        )
    given = dict(given)
    given.setdefault("name", default_name)
    for name in ("autoretry_for", "dont_autoretry_for"):
        if name in given:
            given[name] = tuple(given[name])
    return TaskOptions(**given)
