"""Choosing a queue for a task: ``task_routes``, then ``task_default_queue``.

``task_routes`` takes every form Celery's does (Celery: app/routes.py):

* a dict of task names to routes; a key with ``*`` (or ``?``/``[``) is a
  glob and a compiled ``re.Pattern`` key is a regex; exact names are tried
  first, then patterns in the order given: ``{"reports.*": {"queue": "reports"}}``;
* a list (or tuple) of ``(pattern, route)`` pairs, same rules, kept in order;
* a router function ``(name, args, kwargs, options, task=None, **kw)``
  answering a route, a queue name, or None to pass (a one-argument
  ``(name)`` function works too);
* a dotted path to a router (``"proj.routers.route_task"`` or
  ``"proj.routers:route_task"``), imported on first use; a class with
  ``route_for_task`` (Celery's pre-4.0 routers) is instantiated;
* a list or tuple of any of these, tried in order until one answers.

A route is a dict of send options (``{"queue": "q", "priority": 3}``) or a
queue name; a queue may be a :class:`conveyor.Queue` (or kombu's).  A queue
passed to ``apply_async`` wins over all of it.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from conveyor.exceptions import ConfigurationError
from conveyor.queues import queue_name

RouteResult = dict[str, Any]
Router = Callable[..., Any]
_MAX_KEPT = 4096  # task names whose route is remembered


class Routes:
    """Compiled ``task_routes``: a list of routers tried in order."""

    def __init__(self, spec: Any) -> None:
        self._routers: list[Router] = [_compile(item) for item in _as_list(spec)]
        # Pattern routers look only at the name, so their answer per name can
        # be kept; a callable router may look at the arguments, so it cannot.
        self._by_name: dict[str, RouteResult] | None = (
            {} if all(isinstance(r, _PatternRouter) for r in self._routers) else None
        )

    @property
    def by_name_only(self) -> bool:
        """True when the answer depends on the task name alone (no callable routers)."""
        return self._by_name is not None

    def route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              options: Mapping[str, Any], task: Any = None) -> RouteResult:
        """Options (at least perhaps ``queue``) from the first router that answers.

        The caller must not change the returned dict (it may be shared).
        """
        if self._by_name is None:
            return self._route(name, args, kwargs, options, task)
        known = self._by_name.get(name)
        if known is None:
            if len(self._by_name) >= _MAX_KEPT:  # names sent by send_task are unbounded
                self._by_name.clear()
            known = self._by_name[name] = self._route(name, args, kwargs, options, task)
        return known

    def _route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
               options: Mapping[str, Any], task: Any) -> RouteResult:
        for router in self._routers:
            answer = router(name, args, kwargs, options, task)
            if answer:
                return _as_route(answer, router)
        return {}


def _as_list(spec: Any) -> list[Any]:
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        return list(spec)
    return [spec]


def _is_pair(item: Any) -> bool:
    """``("pattern", route)``: one rule (inside a list, as Celery's docs write them)."""
    return (isinstance(item, tuple) and len(item) == 2
            and isinstance(item[0], (str, re.Pattern))
            and not isinstance(item[1], (list, tuple)))


def _compile(item: Any) -> Router:
    if isinstance(item, Mapping):
        return _PatternRouter(item.items())
    if _is_pair(item):
        return _PatternRouter([item])
    if isinstance(item, (list, tuple)):
        return _PatternRouter(_pairs(item))
    if isinstance(item, str):
        return _LazyRouter(item)
    return _function_router(item)


def _pairs(items: Iterable[Any]) -> list[tuple[Any, Any]]:
    """A list of ``(pattern, route)`` pairs (or of dicts, flattened in order)."""
    pairs: list[tuple[Any, Any]] = []
    for entry in items:
        if isinstance(entry, Mapping):
            pairs.extend(entry.items())
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            pairs.append((entry[0], entry[1]))
        else:
            raise ConfigurationError(
                f"task_routes entry {entry!r} must be a (pattern, route) pair")
    return pairs


def _function_router(item: Any) -> Router:
    """A router function, or a pre-4.0 router object with ``route_for_task``."""
    if isinstance(item, type) and hasattr(item, "route_for_task"):
        item = item()
    if hasattr(item, "route_for_task"):
        method = item.route_for_task
        return lambda name, args, kwargs, options, task: method(name, args, kwargs)
    if not callable(item):
        raise ConfigurationError(
            f"task_routes entry {item!r} must be a dict of patterns, a list of "
            "(pattern, route) pairs, a router function or a dotted path to one")
    return _call_style(item)


def _call_style(router: Router) -> Router:
    """Celery calls ``router(name, args, kwargs, options, task=task)``; adapt to the function."""
    try:
        params = inspect.signature(router).parameters.values()
    except (TypeError, ValueError):
        return lambda name, args, kwargs, options, task: router(
            name, args, kwargs, options, task=task)
    kinds = [p.kind for p in params]
    takes_task = any(p.name == "task" or p.kind is p.VAR_KEYWORD for p in params)
    positional = sum(k in (inspect.Parameter.POSITIONAL_ONLY,
                           inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)
    if positional == 1 and inspect.Parameter.VAR_POSITIONAL not in kinds:
        return lambda name, args, kwargs, options, task: router(name)
    if takes_task:
        return lambda name, args, kwargs, options, task: router(
            name, args, kwargs, options, task=task)
    return lambda name, args, kwargs, options, task: router(name, args, kwargs, options)


class _LazyRouter:
    """A router named by a dotted path, imported when first asked (as Celery)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._router: Router | None = None

    def __call__(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                 options: Mapping[str, Any], task: Any) -> Any:
        if self._router is None:
            from conveyor._config import load_object

            try:
                found = load_object(self.path)
            except (ImportError, AttributeError) as exc:
                raise ConfigurationError(
                    f"task_routes: cannot import router {self.path!r}: {exc}") from exc
            self._router = _function_router(found)
        return self._router(name, args, kwargs, options, task)


class _PatternRouter:
    """Exact names first, then glob and regex patterns in the order given."""

    def __init__(self, table: Iterable[tuple[Any, Any]]) -> None:
        self._exact: dict[str, Any] = {}
        self._patterns: list[tuple[re.Pattern[str], Any]] = []
        for pattern, target in table:
            _check_target(pattern, target)
            if isinstance(pattern, re.Pattern):
                self._patterns.append((pattern, target))
            elif not isinstance(pattern, str):
                raise ConfigurationError(
                    f"task_routes key {pattern!r} must be a task name, a glob or a re.Pattern")
            elif any(ch in pattern for ch in "*?["):
                self._patterns.append((re.compile(fnmatch.translate(pattern)), target))
            else:
                self._exact[pattern] = target

    def __call__(self, name: str, args: Sequence[Any] = (), kwargs: Any = None,
                 options: Any = None, task: Any = None) -> Any:
        if name in self._exact:
            return self._exact[name]
        for regex, target in self._patterns:
            if regex.match(name):
                return target
        return None


def _check_target(pattern: Any, target: Any) -> None:
    if isinstance(target, (str, Mapping)) or hasattr(target, "name"):
        return
    raise ConfigurationError(
        f"task_routes[{pattern!r}] must be a queue name, a Queue or a dict like "
        f"{{'queue': 'name'}}, got {target!r}")


def _as_route(answer: Any, router: Router) -> RouteResult:
    """A router's answer as send options, with ``queue`` a plain name."""
    if isinstance(answer, str) or (hasattr(answer, "name") and not isinstance(answer, Mapping)):
        return {"queue": queue_name(answer)}
    if not isinstance(answer, Mapping):
        raise ConfigurationError(
            f"task router {router!r} answered {answer!r}; expected a dict, a queue name or None")
    route = dict(answer)
    if route.get("queue") is not None:
        route["queue"] = queue_name(route["queue"])
    return route
