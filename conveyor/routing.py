"""Choosing a queue for a task: ``task_routes``, then ``task_default_queue``.

``task_routes`` may be a dict of name patterns to options (``{"reports.tasks.*":
{"queue": "reports"}}``, glob syntax, first match wins in insertion order),
a list of such dicts and callables, or one callable
``(name, args, kwargs, options, task=None) -> dict | str | None``.  A string
answer is a queue name.  A queue passed to ``apply_async`` wins over all of it.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from conveyor.exceptions import ConfigurationError

RouteResult = dict[str, Any]
Router = Callable[..., Any]
_MAX_KEPT = 4096  # task names whose route is remembered


class Routes:
    """Compiled ``task_routes``: a list of routers tried in order."""

    def __init__(self, spec: Any) -> None:
        self._routers: list[Router] = [self._compile(item) for item in _as_list(spec)]
        # Pattern routers look only at the name, so their answer per name can
        # be kept; a callable router may look at the arguments, so it cannot.
        self._by_name: dict[str, RouteResult] | None = (
            {} if all(isinstance(r, _PatternRouter) for r in self._routers) else None
        )

    @staticmethod
    def _compile(item: Any) -> Router:
        if isinstance(item, Mapping):
            return _PatternRouter(item)
        if callable(item):
            return item
        raise ConfigurationError(
            f"task_routes entry {item!r} must be a dict of patterns or a callable"
        )

    @property
    def by_name_only(self) -> bool:
        """True when the answer depends on the task name alone (no callable routers)."""
        return self._by_name is not None

    def route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              options: Mapping[str, Any]) -> RouteResult:
        """Options (at least perhaps ``queue``) from the first router that answers.

        The caller must not change the returned dict (it may be shared).
        """
        if self._by_name is None:
            return self._route(name, args, kwargs, options)
        known = self._by_name.get(name)
        if known is None:
            if len(self._by_name) >= _MAX_KEPT:  # names sent by send_task are unbounded
                self._by_name.clear()
            known = self._by_name[name] = self._route(name, args, kwargs, options)
        return known

    def _route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
               options: Mapping[str, Any]) -> RouteResult:
        for router in self._routers:
            answer = _call_router(router, name, args, kwargs, options)
            if answer:
                return {"queue": answer} if isinstance(answer, str) else dict(answer)
        return {}


def _as_list(spec: Any) -> list[Any]:
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        return list(spec)
    return [spec]


def _call_router(router: Router, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                 options: Mapping[str, Any]) -> Any:
    if isinstance(router, _PatternRouter):
        return router(name)
    try:
        arity = len(inspect.signature(router).parameters)
    except (TypeError, ValueError):
        arity = 4
    if arity == 1:
        return router(name)
    return router(name, args, kwargs, options)


class _PatternRouter:
    """Exact names first, then glob patterns in the order given."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        self._exact: dict[str, Any] = {}
        self._globs: list[tuple[re.Pattern[str], Any]] = []
        for pattern, target in table.items():
            if not isinstance(target, (str, Mapping)):
                raise ConfigurationError(
                    f"task_routes[{pattern!r}] must be a queue name or a dict like "
                    f"{{'queue': 'name'}}, got {target!r}"
                )
            if any(ch in pattern for ch in "*?["):
                self._globs.append((re.compile(fnmatch.translate(pattern)), target))
            else:
                self._exact[pattern] = target

    def __call__(self, name: str) -> Any:
        if name in self._exact:
            return self._exact[name]
        for regex, target in self._globs:
            if regex.match(name):
                return target
        return None
