"""The JSON API the pages use (documented in ``openapi.py``, served at /api/openapi.json).

Handlers are plain functions (Starlette runs them in its thread pool,
because the stores are synchronous).  Errors come back as JSON
``{"error": ...}``: 400 for a bad parameter, 404 for an unknown task, 409
for an action that cannot be done, 503 when a store cannot be reached.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor.events import EventStore, TaskQuery, store_for
from conveyor.exceptions import ConveyorError
from conveyor.monitor import actions, data, tasks
from conveyor.monitor.openapi import openapi_schema

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.monitor")
Handler = Callable[[Request], Any]
WINDOWS = {"1h": data.HOUR, "3600": data.HOUR, "24h": data.DAY, "1d": data.DAY,
           "86400": data.DAY}


class BadRequest(ValueError):
    """A query parameter the API cannot use."""


class Monitor:
    """What handlers share: the app, its stores and a short-lived cache."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> EventStore:
        return store_for(self.app)

    def cached(self, key: tuple[str, ...], ttl: float, compute: Callable[[], Any]) -> Any:
        """Share one computation between the pages polling it (the day view is costly)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        value = compute()
        with self._lock:
            self._cache[key] = (now + ttl, value)
        return value


def _json(value: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(value, status_code=status, headers={"cache-control": "no-store"})


def guarded(run: Callable[[], Any], path: str) -> Response:
    """Run a handler body: JSON out, errors mapped to status codes."""
    try:
        result = run()
    except BadRequest as exc:
        return _json({"error": str(exc)}, 400)
    except LookupError as exc:
        return _json({"error": str(exc).strip("'\"")}, 404)
    except actions.ActionError as exc:
        return _json({"error": str(exc)}, 409)
    except ConveyorError as exc:
        log.warning("monitor %s failed: %s", path, exc)
        return _json({"error": str(exc)}, 503)
    return result if isinstance(result, Response) else _json(result)


def endpoint(fn: Callable[[Monitor, Request], Any]) -> Callable[[Monitor], Handler]:
    """Bind a read handler to the monitor."""
    def bind(monitor: Monitor) -> Handler:
        @functools.wraps(fn)
        def handler(request: Request) -> Response:
            return guarded(lambda: fn(monitor, request), request.url.path)

        return handler

    return bind


# -- parameters ----------------------------------------------------------------
def window_of(request: Request) -> int:
    raw = request.query_params.get("window", "1h")
    if raw not in WINDOWS:
        raise BadRequest(f"window must be one of 1h, 24h (got {raw!r})")
    return WINDOWS[raw]


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a Unix time in seconds, got {raw!r}") from exc


def task_query(request: Request) -> TaskQuery:
    params = request.query_params
    try:
        limit = min(1000, max(1, int(params.get("limit", "100"))))
    except ValueError as exc:
        raise BadRequest("limit must be an integer") from exc
    return TaskQuery(task_id=params.get("id") or None, name=params.get("name") or None,
                     state=(params.get("state") or "").upper() or None,
                     queue=params.get("queue") or None, since=_float(request, "since"),
                     until=_float(request, "until"), limit=limit)


def user_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("user") or "?")


async def _body(request: Request) -> dict[str, Any]:
    if not await request.body():
        return {}
    try:
        doc = await request.json()
    except ValueError as exc:
        raise BadRequest("the body must be JSON") from exc
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    return doc


# -- handlers ------------------------------------------------------------------
@endpoint
def get_overview(m: Monitor, request: Request) -> Any:
    window = window_of(request)
    ttl = 1.0 if window <= data.HOUR else 10.0
    return m.cached(("overview", str(window)), ttl, lambda: data.overview(m.store, window))


@endpoint
def get_workers(m: Monitor, request: Request) -> Any:
    return {"workers": data.workers(m.store)}


@endpoint
def get_queues(m: Monitor, request: Request) -> Any:
    window = window_of(request)
    return m.cached(("queues", str(window)), 1.0, lambda: data.queues(m.app, m.store, window))


@endpoint
def get_tasks(m: Monitor, request: Request) -> Any:
    return {"tasks": tasks.search(m.store, task_query(request))}


@endpoint
def get_running(m: Monitor, request: Request) -> Any:
    return {"tasks": tasks.running(m.app, m.store)}


@endpoint
def get_task(m: Monitor, request: Request) -> Any:
    task_id = request.path_params["task_id"]
    found = tasks.detail(m.app, m.store, task_id)
    if found is None:
        raise LookupError(f"nothing is known about task {task_id}")
    return found


@endpoint
def get_dead_letters(m: Monitor, request: Request) -> Any:
    try:
        limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
    except ValueError as exc:
        raise BadRequest("limit must be an integer") from exc
    queue = request.query_params.get("queue") or None
    return {"dead_letters": data.dead_letters(m.app, queue, limit)}


@endpoint
def get_schedules(m: Monitor, request: Request) -> Any:
    return m.cached(("schedules",), 1.0, lambda: data.schedules(m.app))


def get_me(request: Request) -> Response:
    state = request.scope.get("state", {})
    return _json({"user": state.get("user"), "role": state.get("role")})


def get_openapi(request: Request) -> Response:
    return _json(openapi_schema())


# -- actions (async: they read a body) -------------------------------------------
def action_routes(m: Monitor) -> list[Route]:
    async def task_action(request: Request) -> Response:
        task_id, verb = request.path_params["task_id"], request.path_params["action"]
        user = user_of(request)

        def run() -> dict[str, Any]:
            if verb == "retry":
                return {"task_id": task_id, "new_task_id": actions.retry(m.app, m.store,
                                                                         task_id, user)}
            if verb in ("revoke", "terminate"):
                actions.revoke(m.app, m.store, task_id, user, terminate=verb == "terminate")
                return {"task_id": task_id, verb: True}
            raise LookupError(f"unknown action {verb!r}")

        return await _in_thread(request, run)

    async def dead_action(request: Request) -> Response:
        verb = request.path_params["action"]
        try:
            body = await _body(request)
        except BadRequest as exc:
            return _json({"error": str(exc)}, 400)
        queue, ids = body.get("queue"), body.get("ids")
        user = user_of(request)

        def run() -> dict[str, Any]:
            if not isinstance(queue, str) or not queue:
                raise BadRequest("give the queue: {\"queue\": \"default\", \"ids\": [...]}")
            if ids is not None and not (isinstance(ids, list)
                                        and all(isinstance(i, str) for i in ids)):
                raise BadRequest("ids must be a list of message ids, or null for all")
            if verb == "replay":
                return {"replayed": actions.replay_dead(m.app, m.store, queue, ids, user)}
            if verb == "discard":
                return {"discarded": actions.discard_dead(m.app, m.store, queue, ids, user)}
            raise LookupError(f"unknown action {verb!r}")

        return await _in_thread(request, run)

    return [
        Route("/api/tasks/{task_id}/{action}", task_action, methods=["POST"]),
        Route("/api/dead-letters/{action}", dead_action, methods=["POST"]),
    ]


async def _in_thread(request: Request, run: Callable[[], Any]) -> Response:
    return await run_in_threadpool(guarded, run, request.url.path)


def routes(monitor: Monitor) -> list[Route]:
    """Every /api route."""
    return [
        Route("/api/overview", get_overview(monitor)),
        Route("/api/workers", get_workers(monitor)),
        Route("/api/queues", get_queues(monitor)),
        Route("/api/tasks", get_tasks(monitor)),
        Route("/api/tasks/running", get_running(monitor)),
        Route("/api/tasks/{task_id}", get_task(monitor)),
        Route("/api/dead-letters", get_dead_letters(monitor)),
        Route("/api/schedules", get_schedules(monitor)),
        Route("/api/me", get_me),
        Route("/api/openapi.json", get_openapi),
        *action_routes(monitor),
    ]
