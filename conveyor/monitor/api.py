"""The JSON API the pages use (documented in ``openapi.py``, served at /api/openapi.json).

Handlers are plain functions (Starlette runs them in its thread pool,
because the stores are synchronous).  Errors come back as JSON
``{"error": ...}``: 400 for a bad parameter, 404 for an unknown task, 409
for an action that cannot be done, 503 when a store cannot be reached.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor._events import EventStore, TaskQuery, store_for
from conveyor._serialization import printable
from conveyor.exceptions import ConveyorError
from conveyor.monitor import actions, data, tasks, values
from conveyor.monitor.openapi import openapi_schema

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.monitor")
Handler = Callable[[Request], Any]
WINDOWS = {"1h": data.HOUR, "3600": data.HOUR, "24h": data.DAY, "1d": data.DAY,
           "86400": data.DAY}


#: How many of the most recent index entries one task search looks at, at most.
SCAN = 5000


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


class SafeJSON(JSONResponse):
    """Strict JSON whatever a stored value holds (NaN, lone surrogates, deep nesting)."""

    def render(self, content: Any) -> bytes:
        return values.dumps(content)


def _json(value: Any, status: int = 200) -> JSONResponse:
    return SafeJSON(value, status_code=status, headers={"cache-control": "no-store"})


def guarded(run: Callable[[], Any], path: str) -> Response:
    """Run a handler body: JSON out, errors mapped to status codes."""
    try:
        return _guarded(run, path)
    except Exception:  # a record no one foresaw: say so without a stack trace or a URL
        log.exception("monitor %s failed", path)
        return _json({"error": "internal error in the monitor; its log has the details"},
                     500)


def _guarded(run: Callable[[], Any], path: str) -> Response:
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
        raise BadRequest(f"window must be one of 1h, 24h (got {printable(raw, 40)!r})")
    return WINDOWS[raw]


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not -1e11 < value < 1e11:  # also refuses nan and inf, which reach the stores badly
        raise BadRequest(f"{name} must be a Unix time in seconds, got {printable(raw, 40)!r}")
    return value


def limit_of(request: Request, default: int = 100, most: int = 1000) -> int:
    """The ``limit`` parameter: an integer from 1 to ``most``, else a 400 naming it."""
    raw = request.query_params.get("limit")
    if raw in (None, ""):
        return default
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise BadRequest(f"limit must be an integer from 1 to {most}, "
                         f"got {printable(raw, 40)!r}")
    return limit


def task_query(request: Request) -> TaskQuery:
    params = request.query_params
    limit = limit_of(request)
    return TaskQuery(task_id=params.get("id") or None, name=params.get("name") or None,
                     state=(params.get("state") or "").upper() or None,
                     queue=params.get("queue") or None, since=_float(request, "since"),
                     until=_float(request, "until"), limit=limit, scan=SCAN)


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
def get_status(m: Monitor, request: Request) -> Any:
    """Is it working: workers, queue depths and ages, dead letters, beat (the overview)."""
    return m.cached(("status",), 1.0, lambda: data.status(m.app, m.store))


@endpoint
def get_workers(m: Monitor, request: Request) -> Any:
    return {"workers": data.workers(m.store)}


@endpoint
def get_queues(m: Monitor, request: Request) -> Any:
    window = window_of(request)
    return m.cached(("queues", str(window)), 1.0, lambda: data.queues(m.app, m.store, window))


@endpoint
def get_tasks(m: Monitor, request: Request) -> Any:
    """Matching tasks among the SCAN most recent in the time range (bounded work
    whatever the filter); ``complete`` false means older ones may match too:
    search again with ``until`` set to ``oldest``."""
    page = m.store.search(task_query(request))
    return {"tasks": [entry.to_dict() for entry in page.entries], "complete": page.complete,
            "searched": SCAN, "oldest": page.oldest}


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
def get_task_record(m: Monitor, request: Request) -> Any:
    """The stored record, whole and as stored: what the task page shows cut short."""
    task_id = request.path_params["task_id"]
    stored = m.app.backend.get(task_id)
    if stored is None:
        raise LookupError(f"no result record for task {task_id}")
    return _download(stored.payload, f"task-{task_id}.json")


@endpoint
def get_dead_letters(m: Monitor, request: Request) -> Any:
    queue = request.query_params.get("queue") or None
    return {"dead_letters": data.dead_letters(m.app, queue, limit_of(request))}


@endpoint
def get_dead_letter_body(m: Monitor, request: Request) -> Any:
    """One dead letter's body, whole and as stored (the list shows it cut short)."""
    queue, letter_id = request.query_params.get("queue"), request.query_params.get("id")
    if not queue or not letter_id:
        raise BadRequest("give the queue and id parameters")
    body = data.dead_letter_body(m.app, queue, letter_id)
    if body is None:
        raise LookupError(f"no dead letter {letter_id} in {queue}")
    return _download(body, f"dead-letter-{letter_id}.json")


def _download(body: bytes, filename: str) -> Response:
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)[:120]
    return Response(body, media_type="application/octet-stream", headers={
        "content-disposition": f'attachment; filename="{safe_name}"',
        "cache-control": "no-store"})


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
        Route("/api/status", get_status(monitor)),
        Route("/api/workers", get_workers(monitor)),
        Route("/api/queues", get_queues(monitor)),
        Route("/api/tasks", get_tasks(monitor)),
        Route("/api/tasks/running", get_running(monitor)),
        Route("/api/tasks/{task_id}", get_task(monitor)),
        Route("/api/tasks/{task_id}/record", get_task_record(monitor)),
        Route("/api/dead-letters", get_dead_letters(monitor)),
        Route("/api/dead-letters/body", get_dead_letter_body(monitor)),
        Route("/api/schedules", get_schedules(monitor)),
        Route("/api/me", get_me),
        Route("/api/openapi.json", get_openapi),
        *action_routes(monitor),
    ]
