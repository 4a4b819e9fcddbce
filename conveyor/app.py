"""The application object: settings, the task registry, and sending.

One ``Conveyor`` instance per project, created in ``proj/conveyor.py`` (or
``proj/celery.py``).  It owns one broker connection and one result store per
process: both are opened lazily and reopened after ``fork``, so a worker's
children never share a socket with their parent.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Literal, overload

from conveyor import _priority as priorities
from conveyor import _publishing as publishing
from conveyor import _redact as redact
from conveyor import _signing as signing
from conveyor import _state, signals, states
from conveyor import result as _result
from conveyor._batching import MessageBatch, PlainSends
from conveyor._config import (
    DEFAULT_BROKER_URL,
    DEFAULT_NAMESPACE,
    Settings,
    load_object,
    values_from_env,
    values_from_object,
)
from conveyor._context import Request, running_request
from conveyor._gc import paused as paused_gc
from conveyor._message import (
    Message,
    eta_timestamp,
    expires_timestamp,
    new_id,
)
from conveyor._pid import current as current_pid
from conveyor._routing import Routes
from conveyor._serialization import content_type_for
from conveyor._typing import Q, T, TaskT
from conveyor.brokers import Broker, Envelope, broker_from_url
from conveyor.exceptions import ConfigurationError, NotRegistered, SerializationError
from conveyor.queues import check_declared, queue_name
from conveyor.resultstores import ResultRecord, ResultStore, result_store_from_url
from conveyor.resultstores.base import FencedWrite
from conveyor.resultstores.record import Attempt, describe_exception
from conveyor.task import Task, make_task, strip_no_effect, task_options

if TYPE_CHECKING:
    from conveyor._events import EventSink
    from conveyor._typing import (
        AnyTaskDecorator,
        AsyncFunctionTask,
        BoundTaskDecorator,
        TaskDecorator,
    )
    from conveyor.control.api import Control
    from conveyor.result import AsyncResult

log = logging.getLogger("conveyor.app")

_SEND_OPTIONS = frozenset({
    "countdown", "eta", "expires", "queue", "priority", "idempotency_key", "task_id",
    "link", "link_error", "headers", "chain", "chord", "group_id", "group_index",
    "parent_id", "root_id", "time_limit", "soft_time_limit", "ignore_result",
    "serializer", "retries", "routing_key", "exchange", "shadow", "max_deliveries",
    "idempotency_ttl", "argsrepr", "kwargsrepr",
})


# Options that name one message: meaningless for a batch of them.
_PER_MESSAGE_OPTIONS = frozenset({"task_id", "idempotency_key", "idempotency_ttl", "group_index"})


class Conveyor:
    """A Conveyor application (Celery's ``Celery`` object)."""

    def __init__(self, main: str | None = None, broker: str | None = None,
                 backend: str | None = None, include: Iterable[str] = (),
                 set_as_current: bool = True, task_cls: type[Task] | str | None = None,
                 **settings: Any) -> None:
        self.main = main or "__main__"
        self.conf = Settings()
        self.tasks: dict[str, Task] = {}
        self._task_cls = task_cls  # the default base= of @app.task (Celery's task_cls)
        self._app_task: type[Task] | None = None
        self._include = list(include)
        self._autodiscover: list[tuple[Sequence[str] | None, str]] = []
        self._finalized = False
        self._env_prefixes = ["CONVEYOR_"]
        self._routes: Routes | None = None
        self._steps: tuple[Any, tuple[int, ...]] | None = None  # (setting, parsed)
        # Per task name: (task, its options, the broker, what its plain calls are
        # sent with: None for the general path).
        self._plain: dict[str, tuple[Task, Any, Broker, PlainSends | None]] = {}
        self._broker: tuple[int, Broker] | None = None
        self._results: tuple[int, ResultStore] | None = None
        if broker:
            settings["broker_url"] = broker
        if backend:
            settings["result_backend"] = backend
        if settings:
            self.conf.update(settings, source="Conveyor()")
        self.conf.add_listener(self._invalidate)  # a changed setting takes effect
        _state.register_app(self, set_as_current)

    def __repr__(self) -> str:
        return f"<Conveyor {self.main}>"

    def set_current(self) -> None:
        """Make this the app ``@shared_task`` tasks use."""
        _state.set_current(self)

    # -- configuration -----------------------------------------------------
    def config_from_object(self, obj: Any, namespace: str | None = DEFAULT_NAMESPACE,
                           silent: bool = False) -> None:
        """Load settings from an object, module, mapping or dotted path.

        ``namespace="CELERY"`` reads ``CELERY_BROKER_URL`` as ``broker_url``;
        ``namespace=None`` reads lower-case names as they are.
        """
        if isinstance(obj, str):
            try:
                obj = load_object(obj)
            except ImportError:
                if silent:
                    return
                raise
        where = f"{namespace}_* settings" if namespace else "settings"
        values = values_from_object(obj, namespace)
        self.conf.update(values, source=where)
        if "broker_url" not in values and self.conf.broker_url == DEFAULT_BROKER_URL:
            self.conf.broker_url = _anchored_default_broker(obj)
        if namespace:
            self._env_prefixes = list(dict.fromkeys(
                ["CONVEYOR_", namespace.rstrip("_").upper() + "_"]))
        self._invalidate()

    def config_from_env(self, prefix: str | None = None) -> None:
        """Apply ``CONVEYOR_BROKER_URL`` and friends from the environment.

        Without ``prefix``: ``CONVEYOR_*``, then the namespace settings were
        read with (``CELERY_*`` after ``config_from_object(..., namespace="CELERY")``),
        so an environment variable follows the same naming as the settings file.
        """
        for each in [prefix] if prefix else self._env_prefixes:
            self.conf.update(values_from_env(prefix=each), source="environment")
        self._invalidate()

    def _invalidate(self) -> None:
        self._routes = None
        self._plain = {}
        self._broker = None
        self._results = None

    # -- task registry -------------------------------------------------------
    # The overloads keep the function's signature for type checkers (see
    # conveyor/_typing.py, docs/typing.md); the implementation is the last one.
    @overload
    def task(self, fn: Callable[Q, Coroutine[Any, Any, T]], *, bind: Literal[False] = False,
             **options: Any) -> AsyncFunctionTask[Q, T]: ...
    @overload
    def task(self, fn: Callable[Q, T], *, bind: Literal[False] = False,
             **options: Any) -> Task[Q, T]: ...
    @overload
    def task(self, fn: Callable[Concatenate[Any, Q], Coroutine[Any, Any, T]], *,
             bind: Literal[True], **options: Any) -> AsyncFunctionTask[Q, T]: ...
    @overload
    def task(self, fn: Callable[Concatenate[Any, Q], T], *, bind: Literal[True],
             **options: Any) -> Task[Q, T]: ...
    @overload
    def task(self, fn: None = None, *, bind: Literal[False] = False,
             **options: Any) -> TaskDecorator: ...
    @overload
    def task(self, fn: None = None, *, bind: Literal[True],
             **options: Any) -> BoundTaskDecorator: ...
    @overload
    def task(self, fn: None = None, *, bind: bool, **options: Any) -> AnyTaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Decorator: ``@app.task`` or ``@app.task(bind=True, max_retries=3, base=MyTask)``."""
        base = options.pop("base", None) or self._default_base()

        def decorate(func: Callable[..., Any]) -> Task:
            opts = task_options(func, self.default_task_name(func), options, _base(base))
            task = make_task(base, func, opts, self)
            self._register(task)
            return task

        return decorate(fn) if fn is not None else decorate

    def _default_base(self) -> type[Task]:
        base = self._task_cls
        if isinstance(base, str):
            base = self._task_cls = load_object(base)
        return base or Task

    def register_task(self, task: TaskT | type[TaskT], **options: Any) -> TaskT:
        """Register a class-based task (an instance, or a class to instantiate).

        As Celery's: a task without a ``name`` is named after its class
        (``module.ClassName``); ``options`` are task options applied on top
        of the class's.
        """
        if isinstance(task, type):
            task = task()
        if not isinstance(task, Task):
            raise TypeError(f"register_task() takes a Task subclass or instance, got {task!r}")
        if options:
            task_options(task.fn, task.name, options)  # names unknown options
            task = task.with_options(**options)
        if not task.name:
            task.name = self.default_task_name(type(task))
        task._app = self
        self._register(task)
        return task

    def default_task_name(self, fn: Callable[..., Any]) -> str:
        module = fn.__module__
        if module == "__main__":
            module = self.main
        return f"{module}.{fn.__name__}"

    def _register(self, task: Task) -> None:
        existing = self.tasks.get(task.name)
        replaced = existing is not None and existing.fn is not task.fn
        if replaced and existing is not None and _origin(existing) != _origin(task):
            log.warning("task %s registered twice; the later definition wins", task.name)
        self.tasks[task.name] = task

    def get_task(self, name: str) -> Task:
        """The task registered as ``name``; finalizes (autodiscovers) on a miss."""
        task = self.tasks.get(name)
        if task is None and not self._finalized:
            self.finalize()
            task = self.tasks.get(name)
        if task is None:
            raise NotRegistered(f"no task named {name!r} is registered in {self!r}")
        return task

    def autodiscover_tasks(
        self,
        packages: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` for each package.

        With no packages, the Django project's installed apps are used (when
        Django is configured).  Discovery happens when the app is finalized
        (worker or beat start, or the first lookup of an unknown task), so
        calling this at import time of the app module is safe; ``force``
        imports now.
        """
        pkgs = packages() if callable(packages) else packages
        self._autodiscover.append((pkgs, related_name))
        if force or self._finalized:
            self._discover(pkgs, related_name)

    def finalize(self) -> None:
        """Import ``include`` modules and run pending autodiscovery."""
        if self._finalized:
            return
        self._finalized = True
        signals.import_modules.send(sender=self)
        for module in [*self._include, *self.conf.imports, *self.conf.include]:
            importlib.import_module(module)
        for pkgs, related in self._autodiscover:
            self._discover(pkgs, related)

    def _discover(self, packages: Sequence[str] | None, related_name: str) -> None:
        for package in packages if packages is not None else _django_apps():
            name = f"{package}.{related_name}"
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                # Only a missing tasks module is normal; errors inside it are not.
                if exc.name not in (name, package):
                    raise

    # -- connections -----------------------------------------------------------
    @property
    def broker(self) -> Broker:
        """This process's broker connection (reopened after fork)."""
        pid = current_pid()
        if self._broker is None or self._broker[0] != pid:
            opts = self.conf.broker_options()
            self._broker = (pid, broker_from_url(self.conf.broker_url, opts))
        return self._broker[1]

    @property
    def backend(self) -> ResultStore:
        """This process's result store (reopened after fork)."""
        pid = current_pid()
        if self._results is None or self._results[0] != pid:
            self._results = (pid, result_store_from_url(
                self.conf.result_url, self.conf.result_options(), self.conf.result_retry()))
        return self._results[1]

    @property
    def events(self) -> EventSink:
        """This process's event store for the monitor (reopened after fork)."""
        from conveyor._events import events_for

        return events_for(self)

    def close(self) -> None:
        if "control" in self.__dict__:  # opened by app.control (a cached property)
            self.control.close()
        for held in (self._broker, self._results):
            if held is not None and held[0] == os.getpid():
                held[1].close()
        self._broker = self._results = None

    # -- sending ---------------------------------------------------------------
    @property
    def routes(self) -> Routes:
        if self._routes is None:
            self._routes = Routes(self.conf.task_routes)
        return self._routes

    def send_task(self, name: str, args: Any = None, kwargs: Any = None,
                  _task: Task | None = None, **options: Any) -> AsyncResult:
        """Send a task by name; the worker need not share this process's code.

        ``on_commit=True`` (default: the ``task_enqueue_on_commit`` setting)
        sends only when the caller's open database transaction commits, and
        never if it rolls back; outside a transaction it sends now.  The
        message is built (and its arguments checked) here, either way.

        ``connection=`` (a psycopg 3 connection to the PostgreSQL broker's
        database) writes the message on that connection, inside its open
        transaction: queued if and only if the caller commits.  Inside
        Django's ``atomic()`` on the broker's own database that connection is
        found for you, for every send (``on_commit`` then has nothing to wait for).
        """
        if not options:
            sent = self._send_plain(name, args, kwargs, _task)
            if sent is not None:
                return sent
        connection = options.pop("connection", None)
        if connection is None and self.conf.broker_url.startswith("postgres"):
            connection = signals.transaction_connection(self.conf.broker_url)
            if connection is not None:
                options.pop("on_commit", None)
        if connection is not None:
            return self._send_in_transaction(connection, name, args, kwargs, _task, options)
        on_commit = options.pop("on_commit", None)
        if on_commit is None:
            on_commit = self.conf.task_enqueue_on_commit
        message = self.build_message(name, args, kwargs, _task=_task, **options)
        key = options.get("idempotency_key")
        ttl = options.get("idempotency_ttl")  # seconds; None: the idempotency TTL setting
        if on_commit:
            message.encode()  # a non-serializable argument fails here, not at commit
            if signals.defer_until_commit(
                lambda: self.enqueue([message], idempotency_key=key, idempotency_ttl=ttl)
            ):
                return self.AsyncResult(message.id, task_name=name)
        at = time.monotonic()
        ids = self.enqueue([message], idempotency_key=key, idempotency_ttl=ttl)
        return self._sent_result(ids[0], message.id, name, at)

    def _sent_result(self, task_id: str, made: str, name: str, sent: float) -> AsyncResult:
        """The result of a task just sent; marked new (``AsyncResult._sent``) when
        the broker kept the id made for it: an idempotency key may instead name
        an older message, whose result may be older than this send."""
        result = self.AsyncResult(task_id, task_name=name)
        if task_id == made:
            result._sent = sent
        return result

    def _send_plain(self, name: str, args: Any, kwargs: Any,
                    task: Task | None) -> AsyncResult | None:
        """A call without options (``.delay()``) sent from its task's template, or
        None when this call must take the general path.

        The message of such a call differs from the task's previous one only
        in its id, arguments and time, so its body is spliced into a template
        kept per task (:class:`MessageBatch`, as a group's members are): the
        same bytes as building and encoding a :class:`Message`, for about a
        third of the client CPU.  The template is dropped when a setting or
        the task's options change; calls inside a running task (which record
        their parent) and calls a publish signal receiver watches take the
        general path.
        """
        task = task or self.tasks.get(name)
        if task is None or running_request() is not None or publishing.watched():
            return None
        broker = self.broker
        kept = self._plain.get(name)
        if (kept is None or kept[0] is not task or kept[1] is not task.options
                or kept[2] is not broker):
            kept = (task, task.options, broker, self._plain_sends(name, task, broker))
            self._plain[name] = kept
        sends = kept[3]
        if sends is None:
            return None
        at = time.monotonic()
        made, sent = sends.send(tuple(args) if args else (), dict(kwargs) if kwargs else {})
        result = self.AsyncResult(sent, task_name=name)  # as _sent_result, one call fewer
        if sent == made:
            result._sent = at
        return result

    def _plain_sends(self, name: str, task: Task, broker: Broker) -> PlainSends | None:
        """The template of ``task``'s calls without options; None when its messages
        depend on more than the settings and the task (a callable router, a
        relative ``expires``, redacted arguments, a send deferred to a commit
        or written in the caller's PostgreSQL transaction)."""
        conf = self.conf
        if (conf.task_enqueue_on_commit or conf.broker_url.startswith("postgres")
                or task.options.redact or task.options.expires is not None
                or not self.routes.by_name_only):
            return None
        return PlainSends(MessageBatch(self, self._plain_message(name, task, (), {}, None)),
                          broker)

    def _send_in_transaction(self, connection: Any, name: str, args: Any, kwargs: Any,
                             task: Task | None, options: dict[str, Any]) -> AsyncResult:
        from conveyor.brokers.postgres import PostgresBroker

        broker = self.broker
        if not isinstance(broker, PostgresBroker):
            raise ConfigurationError(
                "send_task(connection=...) writes the message in your PostgreSQL transaction "
                "and needs a postgresql:// broker_url")
        if options.pop("on_commit", None):
            raise ConfigurationError(
                "send_task(connection=...) already sends with your transaction's commit; "
                "drop on_commit=True")
        message = self.build_message(name, args, kwargs, _task=task, **options)
        key, ttl = options.get("idempotency_key"), options.get("idempotency_ttl")
        messages = publishing.before([message])
        envelopes = [self.envelope(m, key, ttl) for m in messages]
        ids = broker.store_in(connection, envelopes)
        publishing.after(messages)
        return self.AsyncResult(ids[0], task_name=name)

    def build_message(self, name: str, args: Any = None, kwargs: Any = None,
                      _task: Task | None = None, **options: Any) -> Message:
        """The message ``send_task`` would send (validated, not yet sent)."""
        task = _task or self.tasks.get(name)
        parent = running_request()
        message = self._new_message(name, task, args, kwargs, options, parent)
        if parent is not None:
            parent.children.append(message.id)
        return message

    def _new_message(self, name: str, task: Task | None, args: Any, kwargs: Any,
                     options: dict[str, Any], parent: Request | None) -> Message:
        if options or (task is not None and task.options.redact):
            return self._message_with_options(name, task, args, kwargs, options, parent)
        return self._plain_message(name, task, args, kwargs, parent)

    def _plain_message(self, name: str, task: Task | None, args: Any, kwargs: Any,
                       parent: Request | None) -> Message:
        """A call with no options (``.delay()``, bulk sends): only what can differ.

        Same result as :meth:`_message_with_options` with empty options, at
        half the cost: every option lookup, the ETA and the headers are skipped.
        """
        routed = self.routes.route(name, args or (), kwargs or {}, {}, task)
        topts = task.options if task is not None else None
        expires = topts.expires if topts is not None else None
        # As _route decides, without building a dict per message.
        queue = (topts and topts.queue) or routed.get("queue") or self.conf.task_default_queue
        if not self.conf.task_create_missing_queues:
            self._check_declared(queue)
        return Message(
            id=new_id(),
            task=name,
            args=tuple(args) if args else (),
            kwargs=dict(kwargs) if kwargs else {},
            queue=queue,
            priority=_priority(None, routed, task, self, parent),
            expires=None if expires is None else _expires(expires, self.conf),
            root_id=parent.root_id if parent else None,
            parent_id=parent.id if parent else None,
            content_type=content_type_for(
                (topts and topts.serializer) or self.conf.task_serializer
            ),
        )

    def _message_with_options(self, name: str, task: Task | None, args: Any, kwargs: Any,
                              options: dict[str, Any], parent: Request | None) -> Message:
        options = strip_no_effect(options)
        unknown = set(options) - _SEND_OPTIONS
        if unknown:
            raise TypeError(f"apply_async() got unknown option(s): {', '.join(sorted(unknown))}")
        route = self._route(name, task, args, kwargs, options)
        return Message(
            id=options.get("task_id") or new_id(),
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            queue=route["queue"],
            priority=_priority(options.get("priority"), route, task, self, parent),
            retries=int(options.get("retries") or 0),
            eta=_eta(options.get("eta"), options.get("countdown"), self.conf),
            expires=_expires(options.get("expires", task.options.expires if task else None),
                             self.conf),
            root_id=options.get("root_id") or (parent.root_id if parent else None),
            parent_id=options.get("parent_id") or (parent.id if parent else None),
            group_id=options.get("group_id"),
            group_index=options.get("group_index"),
            chord=options.get("chord"),
            chain=tuple(options.get("chain") or ()),
            callbacks=_sig_dicts(options.get("link")),
            errbacks=_sig_dicts(options.get("link_error")),
            headers=self._headers(options, task),
            content_type=content_type_for(
                options.get("serializer") or (task and task.options.serializer)
                or self.conf.task_serializer
            ),
        )

    def _route(self, name: str, task: Task | None, args: Any, kwargs: Any,
               options: dict[str, Any]) -> dict[str, Any]:
        """Celery's precedence for the queue: the call, the task, ``task_routes``, the default."""
        routed = self.routes.route(name, args or (), kwargs or {}, options, task)
        queue = (options.get("queue") or (task is not None and task.options.queue)
                 or routed.get("queue") or self.conf.task_default_queue)
        queue = queue_name(queue)
        if not self.conf.task_create_missing_queues:
            self._check_declared(queue)
        return {**routed, "queue": queue}

    def _check_declared(self, queue: str) -> None:
        conf = self.conf
        check_declared(queue, conf.task_queues, conf.task_default_queue)

    def _headers(self, options: dict[str, Any], task: Task | None = None) -> dict[str, Any]:
        headers = dict(options.get("headers") or {})
        for key in ("time_limit", "soft_time_limit", "ignore_result", "max_deliveries", "shadow",
                    "argsrepr", "kwargsrepr"):
            if options.get(key) is not None:
                headers[key] = options[key]
        if task is not None and task.options.redact:  # readers without the task's code
            headers["redact"] = list(task.options.redact)
        return headers

    def send_many(self, name: str, calls: Iterable[Any], **options: Any) -> list[AsyncResult]:
        """Send one message per call of task ``name``, in as few broker calls as it takes.

        Each call is a tuple or list of positional arguments, or a dict of
        keyword arguments: ``app.send_many("shop.resize", [(img,) for img in ids])``.
        ``options`` are ``apply_async``'s and apply to every call; options that
        name one message (``task_id``, ``idempotency_key``) are refused.  Every
        call is checked and encoded before anything is sent, so a bad argument
        sends nothing.  Much faster than a loop of ``apply_async`` (one round
        trip per 1,000 messages on Redis) and than building messages one by one:
        the shared fields are encoded once.
        """
        on_commit = options.pop("on_commit", None)
        if on_commit is None:
            on_commit = self.conf.task_enqueue_on_commit
        refused = sorted(_PER_MESSAGE_OPTIONS & set(options))
        if refused:
            raise TypeError(f"send_many() sends many messages; {', '.join(refused)} "
                            "names one (use apply_async)")
        with paused_gc():  # as a group's send (conveyor._gc)
            ids, envelopes = self._batch(name, [_split_call(call) for call in calls], options)

            def send() -> None:
                self.broker.enqueue_many(envelopes)
                publishing.after_envelopes(envelopes)

            if envelopes and not (on_commit and signals.defer_until_commit(send)):
                send()
            return [_result.AsyncResult(task_id, app=self, task_name=name) for task_id in ids]

    def _batch(self, name: str, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
               options: dict[str, Any]) -> tuple[list[str], list[Envelope]]:
        """Ids and envelopes for ``send_many`` (the caller's task learns of its children)."""
        task = self.tasks.get(name)
        parent = running_request()
        if task is not None and task.options.typing:
            for args, kwargs in calls:
                task._check_arguments(args, kwargs)
        # A callable router may answer per call (a queue, or a priority even
        # when the call names its queue), so it is asked about each one.
        if self.routes.by_name_only and not publishing.watched():
            prototype = self._new_message(name, task, (), {}, options, parent)
            ids, envelopes = self._from_template(prototype, calls)
        else:  # a router may look at each call's arguments
            messages = publishing.before([self._new_message(name, task, args, kwargs, options,
                                                            parent) for args, kwargs in calls])
            ids, envelopes = [m.id for m in messages], [self.envelope(m) for m in messages]
        if parent is not None:
            parent.children.extend(ids)
        return ids, envelopes

    def _from_template(self, prototype: Message, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
                       ) -> tuple[list[str], list[Envelope]]:
        batch = MessageBatch(self, prototype)
        envelope = batch.envelope
        clock = time.time
        ids: list[str] = []
        envelopes: list[Envelope] = []
        for args, kwargs in calls:
            task_id = new_id()
            ids.append(task_id)
            envelopes.append(envelope(task_id, args, kwargs, clock()))
        return ids, envelopes

    def broker_priority(self, message: Message) -> int:
        """The step the broker orders ``message`` by (``priority_steps``: conveyor._priority)."""
        raw = self.conf.broker_transport_options.get("priority_steps")
        cached = self._steps
        if cached is None or cached[0] is not raw:
            cached = self._steps = (raw, priorities.parse_steps(raw))
        return priorities.step_of(message.priority, cached[1])

    def enqueue(self, messages: Sequence[Message], idempotency_key: str | None = None,
                idempotency_ttl: float | None = None) -> list[str]:
        """Encode and store messages (one batch); returns the ids the broker holds."""
        messages = publishing.before(messages)
        envelopes = [self.envelope(m, idempotency_key, idempotency_ttl) for m in messages]
        if len(envelopes) == 1:
            ids = [self.broker.enqueue(envelopes[0])]
        else:
            ids = self.broker.enqueue_many(envelopes)
        publishing.after(messages)
        return ids

    def envelope(self, message: Message, idempotency_key: str | None = None,
                 idempotency_ttl: float | None = None) -> Envelope:
        body = message.encode()
        key = signing.key_for(self.conf)
        if key is not None:
            body = signing.sign(body, key)
        limit = self.conf.task_message_max_bytes
        if limit is not None and len(body) > limit:
            _refuse_size(message.task, message.id, body, limit)
        return Envelope(
            id=broker_message_id(message),
            queue=message.queue,
            body=body,
            priority=self.broker_priority(message),
            eta=message.eta,
            idempotency_key=idempotency_key,
            idempotency_ttl=(idempotency_ttl or self.conf.idempotency_ttl)
            if idempotency_key else None,
        )

    def resend_for_retry(self, request: Request, when: float, args: Any, kwargs: Any,
                         options: dict[str, Any]) -> None:
        """Enqueue the next attempt of the running task (same task id)."""
        assert request.message is not None
        original = request.message
        message = original.evolve(
            retries=original.retries + 1,
            eta=when,
            args=tuple(args) if args is not None else original.args,
            kwargs=dict(kwargs) if kwargs is not None else original.kwargs,
            queue=options.get("queue") or original.queue,
            priority=options.get("priority", original.priority),
            created=time.time(),
        )
        self.enqueue([message])

    # -- results ---------------------------------------------------------------
    def AsyncResult(
        self, task_id: str, task_name: str | None = None,
        parent: _result.AsyncResult | None = None,
    ) -> _result.AsyncResult:
        return _result.AsyncResult(task_id, app=self, task_name=task_name, parent=parent)

    def GroupResult(
        self, group_id: str, results: Sequence[_result.AsyncResult]
    ) -> _result.GroupResult:
        return _result.GroupResult(group_id, list(results), app=self)

    def store_state(self, request: Request, state: str, result: Any = None,
                    exc: BaseException | None = None, traceback: str | None = None,
                    **extra: Any) -> bool:
        """Write a result record for the running request.

        False when the write was refused because a later run of the same task
        call already wrote (the request's worker lost its lease; see
        docs/decisions/0004).
        """
        record = self.record_for(request, state, result, exc, traceback, **extra)
        return self.write_record(record)

    def record_for(self, request: Request, state: str, result: Any = None,
                   exc: BaseException | None = None, traceback: str | None = None,
                   **extra: Any) -> ResultRecord:
        """The record describing ``request`` in ``state``."""
        fields: dict[str, Any] = {"result": result}
        if exc is not None:
            fields.update(describe_exception(exc))
        message = request.message
        args, kwargs = self.shown_arguments(request.task, request.args, request.kwargs,
                                            request.headers)
        return ResultRecord(
            task_id=request.id or "",
            state=state,
            traceback=traceback,
            task=request.headers.get("shadow") or request.task,  # Celery's shadow name
            args=args,
            kwargs=kwargs,
            queue=message.queue if message else None,
            worker=request.hostname,
            retries=request.retries,
            parent_id=request.parent_id,
            root_id=request.root_id,
            group_id=request.group,
            children=list(request.children),
            date_done=time.time() if state in states.READY_STATES else None,
            content_type=content_type_for(self.conf.result_serializer),
            attempt=_attempt(request),
            **fields,
            **extra,
        )

    def shown_arguments(self, name: str | None, args: Any, kwargs: Any,
                        headers: Mapping[str, Any] | None) -> tuple[Any, Any]:
        """A call's arguments as people see them and stores keep them: the task's
        ``redact`` names and the call's ``argsrepr``/``kwargsrepr`` applied
        (:func:`conveyor._redact.arguments`)."""
        task = self.tasks.get(name) if name else None
        keys = task.options.redact if task is not None else ()
        if not keys and not headers:
            return list(args or ()), kwargs
        shown_args, shown_kwargs = redact.arguments(list(args or ()), kwargs, headers, keys)
        return shown_args, shown_kwargs

    def write_record(self, record: ResultRecord) -> bool:
        """Store ``record``; one written by a worker run is fenced (False if refused)."""
        write = self.fenced_write(record)
        if write is None:
            payload = record.encode(self.conf.result_max_bytes, self.conf.result_warn_bytes)
            self.backend.set(record.task_id, record.state, payload, self.conf.result_expires)
            return True
        return self.store_fenced(write)

    def store_fenced(self, write: FencedWrite) -> bool:
        """Store an encoded fenced write (False if a later run's write supersedes it)."""
        return self.backend.set_fenced(write.task_id, write.state, write.payload,
                                       self.conf.result_expires, write.attempt)

    def fenced_write(self, record: ResultRecord) -> FencedWrite | None:
        """``record`` encoded (size limits checked) as the fenced write a worker run
        makes; None for a record without an attempt (not written by a run)."""
        if record.attempt is None:
            return None
        payload = record.encode(self.conf.result_max_bytes, self.conf.result_warn_bytes)
        return FencedWrite(record.task_id, record.state, payload, Attempt(*record.attempt))

    def update_state(self, task_id: str | None, state: str, meta: Any,
                     request: Request | None = None) -> None:
        """Store a custom state (e.g. PROGRESS with ``meta``) for a task."""
        if task_id is None:
            raise ValueError("update_state() needs a task_id outside a running task")
        req = request if request is not None and request.id == task_id else Request(id=task_id)
        self.store_state(req, state, result=meta)

    # -- control ---------------------------------------------------------------
    def revoke(self, task_ids: str | Sequence[str], terminate: bool = False) -> None:
        """Revoke tasks: queued ones are skipped, running ones stopped if ``terminate``."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        self.broker.revoke(ids, self.conf.result_expires, terminate=terminate)

    @functools.cached_property
    def control(self) -> Control:
        """Celery's ``app.control``: remote control of running workers."""
        from conveyor.control.api import Control

        return Control(self)

    @property
    def hostname(self) -> str:
        return socket.gethostname()


def _app_task_class(app: Conveyor) -> type[Task]:
    """``app.Task``: the base class for this app's task classes (``class MyTask(app.Task)``).

    A subclass of :class:`conveyor.Task` whose tasks belong to this app even
    when created outside a decorator (``app.register_task(MyTask())``).  Set
    on the class after its body, where the name ``Task`` means the task class.
    """
    if app._app_task is None:
        app._app_task = type("Task", (Task,), {"_bound_app": app, "__module__": __name__,
                                               "__qualname__": "Conveyor.Task"})
    return app._app_task


Conveyor.Task = property(_app_task_class)  # type: ignore[attr-defined]


def _refuse_size(task: str, task_id: str, body: bytes, limit: int) -> None:
    raise SerializationError(
        f"task {task}[{task_id}]: the message is {len(body)} bytes, above "
        f"task_message_max_bytes={limit}; pass a reference to large data (a path, "
        "a row id) instead of the data itself")


def _split_call(call: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One item of ``send_many``'s calls as (args, kwargs)."""
    if isinstance(call, (tuple, list)):
        return tuple(call), {}
    if isinstance(call, Mapping):
        return (), dict(call)
    raise TypeError(
        f"send_many() takes each call as a tuple or list of positional arguments or a dict "
        f"of keyword arguments, got {type(call).__name__} {call!r}; for one argument per "
        "call write [(x,) for x in items]")


def _attempt(request: Request) -> list[int] | None:
    """The fence of a record written for a delivered message (None outside a worker)."""
    if request.message is None or request.delivery is None:
        return None
    sent = round(request.message.created * 1_000_000)
    return Attempt(sent, request.message.retries, request.delivery.deliveries).as_list()


def broker_message_id(message: Message) -> str:
    """Broker ids: the task id, suffixed per retry so a retry never collides
    with the attempt still holding its lease (and per replacement: ``Task.replace``)."""
    base = message.id
    nesting = message.headers.get("replaced_task_nesting") if message.headers else None
    if nesting:
        base = f"{base}~r{nesting}"
    return base if message.retries == 0 else f"{base}~{message.retries}"


def _origin(task: Task) -> tuple[str, str]:
    return (getattr(task.fn, "__module__", ""), getattr(task.fn, "__qualname__", ""))


def _priority(call: Any, route: Mapping[str, Any], task: Task | None, app: Conveyor,
              parent: Request | None) -> int:
    """Celery's precedence: the call, the task, the route, the parent, the default."""
    conf = app.conf
    inherited = (parent.delivery_info.get("priority")
                 if parent is not None and conf.task_inherit_parent_priority else None)
    return priorities.resolve(call, task.options.priority if task is not None else None,
                            route.get("priority"), inherited, conf.task_default_priority)


def _eta(eta: Any, countdown: Any, conf: Settings) -> float | None:
    return eta_timestamp(eta, countdown, conf.enable_utc, conf.timezone)


def _expires(value: Any, conf: Settings) -> float | None:
    return expires_timestamp(value, conf.enable_utc, conf.timezone)


def _sig_dicts(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(item.to_dict() if hasattr(item, "to_dict") else dict(item) for item in items)


def _django_apps() -> list[str]:
    try:
        from django.apps import apps
        from django.conf import settings
    except ImportError as exc:
        raise ConfigurationError(
            "autodiscover_tasks() without packages needs Django; pass the package names"
        ) from exc
    if apps.ready:
        return [config.name for config in apps.get_app_configs()]
    return [name for name in settings.INSTALLED_APPS]


@overload
def shared_task(fn: Callable[Q, Coroutine[Any, Any, T]], *, bind: Literal[False] = False,
                **options: Any) -> AsyncFunctionTask[Q, T]: ...
@overload
def shared_task(fn: Callable[Q, T], *, bind: Literal[False] = False,
                **options: Any) -> Task[Q, T]: ...
@overload
def shared_task(fn: Callable[Concatenate[Any, Q], Coroutine[Any, Any, T]], *,
                bind: Literal[True], **options: Any) -> AsyncFunctionTask[Q, T]: ...
@overload
def shared_task(fn: Callable[Concatenate[Any, Q], T], *, bind: Literal[True],
                **options: Any) -> Task[Q, T]: ...
@overload
def shared_task(fn: None = None, *, bind: Literal[False] = False,
                **options: Any) -> TaskDecorator: ...
@overload
def shared_task(fn: None = None, *, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...
@overload
def shared_task(fn: None = None, *, bind: bool, **options: Any) -> AnyTaskDecorator: ...


def shared_task(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Like ``app.task``, for reusable apps that do not know the project's app."""
    base = options.pop("base", None) or Task

    def decorate(func: Callable[..., Any]) -> Task:
        name = f"{func.__module__}.{func.__name__}"
        task = make_task(base, func, task_options(func, name, options, _base(base)), app=None)
        _state.add_shared_task(task)
        return task

    return decorate(fn) if fn is not None else decorate


def _base(base: Any) -> type[Task]:
    """``base=`` checked to be a task class (for a clear error before it is used)."""
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise ConfigurationError(f"base={base!r} is not a task class: subclass conveyor.Task "
                                 "(or app.Task)")
    return base


def _anchored_default_broker(settings: Any) -> str:
    """The default SQLite file, next to a Django project's ``BASE_DIR`` when it has one.

    Relative to the working directory, a shell started one folder away from
    the worker would write to another file and wait for ever; a Django
    project has a fixed anchor, so the default uses it.  Without one (plain
    Python) the default stays relative to the working directory.
    """
    base = getattr(settings, "BASE_DIR", None)
    if isinstance(settings, Mapping):
        base = settings.get("BASE_DIR")
    if not isinstance(base, (str, os.PathLike)):
        return DEFAULT_BROKER_URL
    return f"sqlite:///{os.path.join(os.fspath(base), 'conveyor.db')}"

__all__ = ["Conveyor", "shared_task"]
