"""Tasks: a function (or a class's ``run``) plus its options, hooks, and ways to call it.

``@app.task`` and ``@shared_task`` wrap a function in a :class:`Task` (or in
an instance of the ``base=`` subclass); ``app.register_task`` takes an
instance of a subclass that defines ``run``.  Calling the task runs the body
here and now; ``.delay()`` and ``.apply_async()`` send a message for a
worker; ``.apply()`` runs it here as a worker would (eager mode).

Every option reads back as an attribute with Celery's name, defaulting from
the settings as Celery's ``Task`` does.  A subclass's class attributes that
name options (``max_retries = 5``) become defaults for its tasks; they are
moved into ``_class_options`` when the class is created, so there is no
metaclass and no per-task subclass generated at run time.
"""

from __future__ import annotations

import copy as _copy
import functools
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, Generic, overload

from conveyor import states
from conveyor._context import current_request
from conveyor._retry import Backoff, backoff_for
from conveyor._typing import A, P, Q, R, T
from conveyor.canvas import Signature
from conveyor.exceptions import ConfigurationError, MaxRetriesExceededError, Retry

if TYPE_CHECKING:
    from typing_extensions import Self  # annotations only: not a runtime dependency

    from conveyor._config import Settings
    from conveyor._eager import EagerResult
    from conveyor.app import Conveyor
    from conveyor.canvas import Canvas
    from conveyor.canvas import chunks as Chunks
    from conveyor.einfo import ExceptionInfo
    from conveyor.result import AsyncResult

log = logging.getLogger("conveyor.task")

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


# Options Celery sends to AMQP (exchange routing, message persistence, publish
# flags).  Accepted on the decorator, as class attributes and per call, so a
# Celery project loads; they change nothing here, and using one warns once.
NO_EFFECT_TASK_OPTIONS: dict[str, str] = {
    "delivery_mode": "AMQP message persistence; every Conveyor broker stores messages "
                     "durably until they are acknowledged",
    "exchange": "AMQP exchanges; Conveyor addresses queues directly (queue= or task_routes)",
    "exchange_type": "AMQP exchanges; Conveyor addresses queues directly (queue= or "
                     "task_routes)",
    "routing_key": "AMQP routing keys; choose the queue with queue= or task_routes",
    "mandatory": "an AMQP publish flag; an enqueue here either succeeds or raises",
    "immediate": "an AMQP publish flag (removed in RabbitMQ 3); an enqueue here either "
                 "succeeds or raises",
}

# Celery task attributes read from settings only: a task (or task class) may
# not set them, because the worker honours the setting alone.
# (Only read back here: the worker reads the settings where it honours them.)
# The setting each option defaults from when a task leaves it unset (None),
# as Celery's ``Task.from_config``.
OPTION_SETTINGS: dict[str, Callable[[Settings], Any]] = {
    "serializer": lambda conf: conf.task_serializer,
    # Only read back here; the worker's rate limiting reads the setting itself.
    "rate_limit": lambda conf: getattr(conf, "task_default_rate_limit"),  # noqa: B009
    "priority": lambda conf: conf.task_default_priority,
    "time_limit": lambda conf: conf.task_time_limit,
    "soft_time_limit": lambda conf: conf.task_soft_time_limit,
    "track_started": lambda conf: conf.task_track_started,
    "acks_late": lambda conf: conf.task_acks_late,
    "acks_on_failure_or_timeout": lambda conf: conf.task_acks_on_failure_or_timeout,
    "reject_on_worker_lost": lambda conf: conf.task_reject_on_worker_lost,
    "acks_on_failure": lambda conf: conf.task_acks_on_failure,  # None: the one above
    "acks_on_timeout": lambda conf: conf.task_acks_on_timeout,  # None: the one above
    "ignore_result": lambda conf: conf.task_ignore_result,
    "store_eager_result": lambda conf: conf.task_store_eager_result,
    "default_retry_delay": lambda conf: conf.task_default_retry_delay,
    "max_deliveries": lambda conf: conf.task_max_deliveries,
}


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
    acks_on_failure: bool | None = None  # None: its setting, else acks_on_failure_or_timeout
    acks_on_timeout: bool | None = None  # None: its setting, else acks_on_failure_or_timeout
    reject_on_worker_lost: bool | None = None
    track_started: bool | None = None
    queue: str | None = None
    priority: int | None = None
    rate_limit: str | float | None = None
    global_rate_limit: str | float | None = None  # shared by every worker (Conveyor's own)
    ignore_result: bool | None = None
    store_eager_result: bool | None = None
    expires: float | None = None
    serializer: str | None = None
    max_deliveries: int | None = None
    typing: bool = True
    # Names of arguments shown as "********" wherever people see or stores keep
    # the call (monitor, results, error reports); the task still gets them.
    redact: tuple[str, ...] = ()
    # No effect here (NO_EFFECT_TASK_OPTIONS); kept so the attributes read back.
    delivery_mode: Any = None
    exchange: Any = None
    exchange_type: Any = None
    routing_key: Any = None
    mandatory: Any = None
    immediate: Any = None

    def __post_init__(self) -> None:
        parse_rate_limit(self.rate_limit)
        parse_rate_limit(self.global_rate_limit)
        if self.priority is not None and not 0 <= self.priority <= 9:
            raise ConfigurationError(
                f"task {self.name}: priority must be 0..9, got {self.priority}"
            )
        if not isinstance(self.autoretry_for, tuple):
            object.__setattr__(self, "autoretry_for", tuple(self.autoretry_for))
        object.__setattr__(self, "redact", _redact_names(self.name, self.redact))

    @classmethod
    def accepted(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @property
    def backoff(self) -> Backoff | None:
        return backoff_for(self.retry_backoff, self.retry_backoff_max, self.retry_jitter)

    def no_effect(self) -> list[str]:
        """The AMQP-only options this task sets."""
        return [name for name in NO_EFFECT_TASK_OPTIONS if getattr(self, name) is not None]


_DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default_factory is not MISSING else f.default
    for f in fields(TaskOptions) if f.name != "name"
}
# Names a Task subclass may set as class attributes to give its tasks defaults.
CLASS_OPTIONS = frozenset(TaskOptions.accepted() - {"bind"})


class _Option:
    """A task option read as an attribute: the task's value, else its setting.

    On the class (``MyTask.max_retries``) it reads the class's own default.
    Assigning (``task.max_retries = 0``, as Celery code does in tests)
    replaces the task's options, validated as at decoration.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, task: Task | None, owner: type[Task] | None = None) -> Any:
        if task is None:
            assert owner is not None
            value = owner._class_options.get(self.name, _DEFAULTS.get(self.name))
            return 3 if self.name == "max_retries" and value == -1 else value
        return task._option(self.name)

    def __set__(self, task: Task, value: Any) -> None:
        task.options = replace(task.options, **{self.name: value})


def _mixin_options(cls: type) -> dict[str, Any]:
    """Option values set by classes mixed in before ``Task`` that are not task classes."""
    found: dict[str, Any] = {}
    for base in reversed(cls.__mro__[1:]):
        if base is object or (isinstance(base, type) and issubclass(base, Task)):
            continue
        found.update({name: value for name, value in vars(base).items()
                      if name in CLASS_OPTIONS and not isinstance(value, _Option)})
    return found


class Task(Generic[P, R]):
    """A task: a function (or a subclass's ``run``) with its options and hooks.

    Attribute names follow Celery's.  Subclass it (or ``app.Task``) to share
    options, hooks and helpers between tasks: ``@app.task(base=MyTask)``, or
    a class with a ``run`` method registered with ``app.register_task``.
    Option values set as class attributes (``max_retries = 5``) become the
    defaults of the class's tasks; the decorator's options win over them.

    For type checkers a task is generic in its function's parameters ``P``
    and return type ``R`` (``@app.task`` fills them in), so calls, ``delay``
    and ``si`` are checked against the function; a bare ``Task`` is
    ``Task[..., Any]`` and checks nothing (docs/typing.md).
    """

    MaxRetriesExceededError = MaxRetriesExceededError

    # The class's option defaults (gathered from class attributes, see
    # __init_subclass__) and, for ``app.Task`` subclasses, their app.
    _class_options: ClassVar[dict[str, Any]] = {}
    _bound_app: ClassVar[Conveyor | None] = None
    _ready = False  # set once the instance has its function and options

    name = _Option()
    max_retries = _Option()
    default_retry_delay = _Option()
    autoretry_for = _Option()
    dont_autoretry_for = _Option()
    retry_kwargs = _Option()
    retry_backoff = _Option()
    retry_backoff_max = _Option()
    retry_jitter = _Option()
    soft_time_limit = _Option()
    time_limit = _Option()
    acks_late = _Option()
    acks_on_failure_or_timeout = _Option()
    acks_on_failure = _Option()
    acks_on_timeout = _Option()
    reject_on_worker_lost = _Option()
    track_started = _Option()
    queue = _Option()
    priority = _Option()
    rate_limit = _Option()
    global_rate_limit = _Option()
    ignore_result = _Option()
    store_eager_result = _Option()
    expires = _Option()
    serializer = _Option()
    max_deliveries = _Option()
    typing = _Option()
    redact = _Option()
    delivery_mode = _Option()
    exchange = _Option()
    exchange_type = _Option()
    routing_key = _Option()
    mandatory = _Option()
    immediate = _Option()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Turn option class attributes into the class's task defaults."""
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        found = _mixin_options(cls)
        found.update({name: own[name] for name in CLASS_OPTIONS & set(own)
                      if not isinstance(own[name], _Option)})
        for name in found:
            if name in own:
                delattr(cls, name)  # so the _Option on Task answers for every task
            else:  # set by a mixin: shadow it with the option on this class
                setattr(cls, name, Task.__dict__[name])
        cls._class_options = {**cls._class_options, **found}

    def __init__(self, fn: Callable[..., Any] | None = None, options: TaskOptions | None = None,
                 app: Conveyor | None = None) -> None:
        if self._ready:
            return  # a task class's own __init__ calling super().__init__() (see make_task)
        if fn is None:
            fn, options = self._class_body(options)
        elif options is None:
            options = task_options(fn, f"{fn.__module__}.{fn.__name__}", {}, type(self))
        self._setup(fn, options, app)

    def _class_body(self, options: TaskOptions | None) -> tuple[Callable[..., Any], TaskOptions]:
        """A class-based task: its ``run`` method is the body (Celery's style)."""
        cls = type(self)
        if cls.run is Task.run:
            raise TypeError(f"{cls.__qualname__}() has no run() method: define run() in the "
                            "class, or decorate a function with @app.task(base=...)")
        return self.run, options or task_options(cls.run, cls._class_options.get("name") or "",
                                                 {}, cls)

    def _setup(self, fn: Callable[..., Any], options: TaskOptions,
               app: Conveyor | None) -> None:
        self.fn = fn
        self.options = options
        self._app = app
        self._signature: tuple[Callable[..., Any], inspect.Signature | None] | None = None
        self._fitting_shapes: set[tuple[Any, ...]] = set()  # see _check_arguments
        self._class_based = getattr(fn, "__self__", None) is self
        if not self._class_based:
            functools.update_wrapper(self, fn)
            if type(self).run is not Task.run:  # a base class's run() must not hide fn
                self.run = functools.partial(Task.run, self)  # type: ignore[method-assign]
        self.is_async = inspect.iscoroutinefunction(fn)
        self._ready = True

    # -- identity ---------------------------------------------------------
    @property
    def app(self) -> Conveyor:
        """The owning app; a shared task answers with the current app."""
        if self._app is not None:
            return self._app
        if self._bound_app is not None:
            return self._bound_app
        from conveyor._state import current_app

        return current_app()

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    def _option(self, name: str) -> Any:
        """An option's value for this task: its own, else the setting (Celery's defaults)."""
        value = getattr(self.options, name)
        if name == "max_retries":
            return self.app.conf.task_default_max_retries if value == -1 else value
        if name in ("soft_time_limit", "time_limit"):
            return value or OPTION_SETTINGS[name](self.app.conf)
        if name in ("acks_on_failure", "acks_on_timeout"):  # Celery 5.6's split
            if value is None:
                value = OPTION_SETTINGS[name](self.app.conf)
            return self._option("acks_on_failure_or_timeout") if value is None else value
        setting = OPTION_SETTINGS.get(name)
        if value is None and setting is not None:
            return setting(self.app.conf)
        return value

    @property
    def request(self) -> Any:
        """The request being run (a :class:`~conveyor._context.Request`)."""
        return current_request()

    @property
    def backend(self) -> Any:
        """The result store this task's results go to (the app's)."""
        return self.app.backend

    # -- running ----------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the body in this process, now (no message, no worker)."""
        return self.run(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The task's body: the decorated function (a task class overrides this)."""
        if self.options.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> EagerResult[R]:
        """Run the task here and now, as a worker would, and return an ``EagerResult``.

        The call is encoded and decoded as it would travel (a value that could
        not be sent raises here), hooks run, retries run again at once, and
        ``link`` callbacks follow inline.  ``throw`` (default:
        ``task_eager_propagates``) re-raises the task's error.
        """
        from conveyor import _eager as eager

        if self.options.typing:  # a delay()'s tuple and dict as they are: nothing changes them
            self._check_arguments(args if type(args) is tuple else tuple(args or ()),
                                  kwargs if type(kwargs) is dict else dict(kwargs or {}))
        return eager.apply(self, args, kwargs, **options)

    # -- hooks (Celery's; the worker calls them, see conveyor._hooks) --------
    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Called in the worker just before the body runs."""

    def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> None:
        """Called after the task succeeded and its result was stored."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], einfo: ExceptionInfo) -> None:
        """Called after the task failed and its failure was stored."""

    def on_retry(self, exc: BaseException | None, task_id: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], einfo: ExceptionInfo) -> None:
        """Called after the task's next attempt was scheduled."""

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any], einfo: ExceptionInfo | None) -> None:
        """Called after ``on_success`` or ``on_failure`` (not after a retry)."""

    # -- sending ----------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send with positional and keyword arguments and default options."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None,
                    **options: Any) -> AsyncResult[R]:
        """Send a message; ``options`` as in :meth:`Conveyor.send_task`.

        Under ``task_always_eager`` the task runs here instead (see :meth:`apply`).
        ``args`` and ``kwargs`` are not checked by type checkers (a tuple
        cannot be matched to parameters); they are checked here, at the call.
        """
        if not self.options.name:
            raise ConfigurationError(
                f"{type(self).__qualname__} has no name: give the class a name attribute or "
                "register it with app.register_task() before sending it")
        if self.options.typing:
            self._check_arguments(tuple(args or ()), dict(kwargs or {}))
        app = self.app
        if app.conf.task_always_eager:
            from conveyor import _eager as eager

            return eager.apply(self, args, kwargs, **options)
        # options.name, not self.name: the same value (checked above) without
        # the option descriptor's settings fallback, on every send.
        return app.send_task(self.options.name, args, kwargs, _task=self, **options)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Like :meth:`delay`, sent when the open database transaction commits.

        A rolled-back transaction sends nothing; outside a transaction this
        sends now.  Arguments are checked here, at the call.
        """
        return self.apply_async(args, kwargs, on_commit=True)

    def apply_async_on_commit(self, args: Any = None, kwargs: Any = None,
                              **options: Any) -> AsyncResult[R]:
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

    @overload
    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]: ...
    @overload
    def s(self: Task[Concatenate[A, Q], T], *args: Q.args, **kwargs: Q.kwargs) -> Signature[T]: ...

    def s(self, *args: Any, **kwargs: Any) -> Signature[Any]:
        """A partial signature: a chain prepends the previous result to ``args``.

        Type checkers accept either every argument or every argument but
        the first (the chain idiom ``add.s(3)``, the previous result coming
        first); other partial forms need :meth:`signature` (docs/typing.md).
        """
        return Signature._call(self._signature_name(), args, kwargs, False, self._app)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """An immutable signature: ignores the previous result in a chain.

        It is called with exactly these arguments, so they are checked in full.
        """
        return Signature._call(self._signature_name(), args, kwargs, True, self._app)

    def _signature_name(self) -> str:
        name = self.options.name
        if not isinstance(name, str):  # as Signature() refuses it
            raise TypeError(f"signature() needs a task or a task name, got {name!r}")
        return name

    def signature(self, args: Any = None, kwargs: Any = None,
                  **options: Any) -> Signature[R]:
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

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
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
        if request.is_eager:  # the eager runner runs the next attempt at once
            from conveyor import _eager as eager

            eager.plan_retry(self.app, request, args, kwargs, options)
        else:
            self.app.resend_for_retry(request, when, args, kwargs, options)
        if not request.is_eager or self.store_eager_result:
            self.app.store_state(request, states.RETRY, exc=exc)
        signal = Retry(exc=exc, when=when - time.time())
        if throw:
            raise signal
        return signal

    def _retry_eta(self, eta: datetime | None, countdown: float | None, retries: int) -> float:
        if eta is not None:
            from conveyor._message import moment_timestamp  # naive: as at send

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

    def replace(self, sig: Canvas) -> Any:
        """End this task and let ``sig`` finish its work, under this task's id.

        As Celery's ``Task.replace``: the replacement takes over the task's
        place (its callbacks, errbacks, the rest of its chain, its group or
        chord slot), and the task's ``AsyncResult`` resolves to the
        replacement's result.  Raises :class:`~conveyor.exceptions.Ignore`
        to stop the task, so write ``return self.replace(sig)`` or
        ``raise self.replace(sig)``; in eager mode the replacement runs at
        once and its value is returned.
        """
        from conveyor import _replacing as replacing

        return replacing.replace(self, sig)

    def with_options(self, **changes: Any) -> Self:
        """A copy with different options (used by tests and the Django contrib)."""
        copy = _copy.copy(self)
        copy.options = replace(self.options, **changes)
        copy._signature, copy._fitting_shapes = None, set()
        if self._class_based:
            copy.fn = copy.run  # the copy's own bound run()
        elif "run" in vars(self):  # see _setup: run() bound to the copy, not to self
            copy.run = functools.partial(Task.run, copy)  # type: ignore[method-assign]
        return copy


def _redact_names(task: str, found: Any) -> tuple[str, ...]:
    """``redact=["password"]``: argument names, as a tuple; a lone string is one name."""
    names = (found,) if isinstance(found, str) else tuple(found or ())
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ConfigurationError(f"task {task}: redact takes argument names (strings), "
                                 f"got {bad[0]!r}")
    return names


def task_options(fn: Any, default_name: str, given: dict[str, Any],
                 base: type[Task] = Task) -> TaskOptions:
    """Validate decorator keywords over ``base``'s class defaults, naming unknown ones."""
    unknown = set(given) - TaskOptions.accepted()
    if unknown:
        raise ConfigurationError(
            f"task {getattr(fn, '__qualname__', fn)!r}: unknown option(s) "
            f"{', '.join(sorted(unknown))}; known: {', '.join(sorted(TaskOptions.accepted()))}"
        )
    # A class's ``name`` names its own (class-based) task, never the functions
    # decorated with it as base (Celery gives those their own names too).
    inherited = {k: v for k, v in base._class_options.items() if k != "name"}
    given = {**inherited, **given}
    if not given.get("name"):
        given["name"] = default_name
    for name in ("autoretry_for", "dont_autoretry_for"):
        if name in given:
            given[name] = tuple(given[name])
    return TaskOptions(**given)


def make_task(base: type[Task], fn: Callable[..., Any], options: TaskOptions,
              app: Conveyor | None) -> Task:
    """A task of class ``base`` running ``fn`` (``@app.task(base=...)``).

    As Celery does, the class's own ``__init__`` (if it has one) is called
    without arguments, after the task has its function and options.
    """
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise ConfigurationError(f"base={base!r} is not a task class: subclass conveyor.Task "
                                 "(or app.Task)")
    task = base.__new__(base)
    Task.__init__(task, fn, options, app)
    if base.__init__ is not Task.__init__:
        base.__init__(task)
    return task


def strip_no_effect(options: dict[str, Any]) -> dict[str, Any]:
    """Per-call options without the AMQP-only ones (each named in a warning once)."""
    found = [name for name in NO_EFFECT_TASK_OPTIONS if name in options]
    if not found:
        return options
    new = [name for name in found if name not in _WARNED_CALL_OPTIONS]
    if new:
        _WARNED_CALL_OPTIONS.update(new)
        log.warning("apply_async(): %s", _no_effect_text(new))
    return {key: value for key, value in options.items() if key not in NO_EFFECT_TASK_OPTIONS}


_WARNED_CALL_OPTIONS: set[str] = set()


def warn_no_effect_options(tasks: Iterable[Task]) -> str | None:
    """One warning naming the tasks that set AMQP-only options (at worker start).

    The task-option counterpart of ``Settings.warn_no_effect``; None when no
    task sets one.
    """
    used: dict[str, list[str]] = {}
    for task in tasks:
        for name in task.options.no_effect():
            used.setdefault(name, []).append(task.name)
    if not used:
        return None
    where = "; ".join(f"{name} (tasks {', '.join(sorted(names))})"
                      for name, names in used.items())
    text = f"task options with no effect in Conveyor: {where}: {_no_effect_text(list(used))}"
    log.warning("%s", text)
    return text


def _no_effect_text(names: list[str]) -> str:
    reasons = "; ".join(f"{name}: {NO_EFFECT_TASK_OPTIONS[name]}" for name in names)
    return f"{', '.join(names)} accepted but has no effect in Conveyor ({reasons})"

__all__ = ["Task", "TaskOptions"]
