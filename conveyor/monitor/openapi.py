"""The OpenAPI 3.1 description of the monitor's JSON API (GET /api/openapi.json).

Written by hand next to the handlers in ``api.py``; ``tests/integration/
test_monitor_api.py`` checks that every route is described and every
described path answers.
"""

from __future__ import annotations

from typing import Any

NUM: dict[str, Any] = {"type": "number"}
NUM_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
STR: dict[str, Any] = {"type": "string"}
STR_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def _ok(schema: dict[str, Any], what: str = "OK") -> dict[str, Any]:
    return {"200": {"description": what, "content": {"application/json": {"schema": schema}}},
            "401": {"description": "no or wrong credentials"},
            "503": {"description": "a store cannot be reached", "content": {
                "application/json": {"schema": _ref("Error")}}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or STR}


WINDOW = _query("window", "1h (per-minute points) or 24h (per-10-minute points)",
                {"type": "string", "enum": ["1h", "24h"], "default": "1h"})
TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": STR}
OUTCOME_COUNTS = {s: NUM for s in ("SUCCESS", "FAILURE", "RETRY", "REVOKED", "DEAD")}
LATENCY = _obj({"p50": NUM_OR_NULL, "p90": NUM_OR_NULL, "p95": NUM_OR_NULL,
                "p99": NUM_OR_NULL, "mean": NUM_OR_NULL, "count": NUM})

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": STR}, ["error"]),
    "Overview": _obj({
        "window": NUM, "step": NUM, "now": NUM,
        "series": {"type": "array", "items": _obj({
            "t": NUM, **OUTCOME_COUNTS, "per_minute": NUM, "runtime_p50": NUM_OR_NULL,
            "runtime_p95": NUM_OR_NULL, "wait_p50": NUM_OR_NULL, "wait_p95": NUM_OR_NULL})},
        "totals": _obj({**OUTCOME_COUNTS, "total": NUM}),
        "rates": _obj({"success": NUM_OR_NULL, "failure": NUM_OR_NULL, "retry": NUM_OR_NULL}),
        "throughput_per_minute": NUM,
        "latency": _obj({"runtime": LATENCY, "wait": LATENCY}),
        "tasks": {"type": "array", "items": _obj({"name": STR, **OUTCOME_COUNTS, "total": NUM})},
    }),
    "Worker": _obj({
        "id": STR, "hostname": STR, "pid": NUM, "queues": {"type": "array", "items": STR},
        "pool": STR, "concurrency": NUM, "active": {"type": "array", "items": _obj(
            {"id": STR, "task": STR, "queue": STR, "started_at": NUM})},
        "processed": NUM, "failed": NUM, "memory_kib": NUM_OR_NULL, "heartbeat_at": NUM,
        "started_at": NUM, "online": {"type": "boolean"}, "offline_at": NUM,
        "last_seen": NUM}),
    "QueueDepth": _obj({"queue": STR, "ready": NUM, "delayed": NUM, "inflight": NUM,
                        "dead": NUM, "oldest_age": {
                            "type": ["number", "null"],
                            "description": "seconds the oldest ready message has waited; 0 "
                                           "with none ready; null: the broker cannot tell "
                                           "(RabbitMQ)"}}),
    "Status": _obj({
        "now": NUM,
        "workers": {"type": ["object", "null"], "properties": {
            "online": NUM, "offline": NUM, "items": {"type": "array", "items": _obj({
                "id": STR, "hostname": STR, "online": {"type": "boolean"},
                "queues": {"type": "array", "items": STR}, "active_count": NUM,
                "last_seen": NUM})}}},
        "queues": {"type": ["array", "null"], "items": _ref("QueueDepth")},
        "dead_letters": NUM_OR_NULL,
        "beat": {"type": ["object", "null"], "properties": {
            "leader": STR_OR_NULL, "alive_at": STR_OR_NULL, "timezone": STR, "entries": NUM,
            "next": {"type": "array", "items": _obj({"name": STR, "task": STR,
                                                     "next_run": STR})}}},
        "errors": {"type": "object", "additionalProperties": STR,
                   "description": "parts that could not be read (null above), and why"},
    }),
    "TaskEntry": _obj({
        "task_id": STR, "name": STR, "state": STR, "queue": STR_OR_NULL, "worker": STR_OR_NULL,
        "retries": NUM, "sent_at": NUM_OR_NULL, "started_at": NUM_OR_NULL,
        "done_at": NUM_OR_NULL, "runtime": NUM_OR_NULL, "wait": NUM_OR_NULL,
        "info": STR_OR_NULL, "updated_at": NUM}),
    "RunningTask": _obj({"id": STR, "task": STR, "queue": STR, "worker": STR,
                         "started_at": NUM, "state": STR, "progress": NUM_OR_NULL,
                         "meta": {}}),
    "TimelineEvent": _obj({"task_id": STR, "ts": NUM, "kind": STR, "detail": STR,
                           "worker": STR_OR_NULL}),
    "TaskDetail": {"allOf": [_ref("TaskEntry"), _obj({
        "args": {}, "kwargs": {}, "result": {}, "traceback": STR_OR_NULL,
        "exc_type": STR_OR_NULL, "parent_id": STR_OR_NULL, "root_id": STR_OR_NULL,
        "group_id": STR_OR_NULL, "progress": NUM_OR_NULL, "revoked": {"type": "boolean"},
        "timeline": {"type": "array", "items": _ref("TimelineEvent")},
        "children": {"type": "array", "items": _obj({"task_id": STR, "state": STR,
                                                     "name": STR_OR_NULL})},
        "group": {"type": ["object", "null"]},
        "truncated": {"type": "boolean", "description": "values were cut short for display "
                      "(NaN/Infinity appear as strings); GET /api/tasks/{task_id}/record "
                      "has the whole"}})]},
    "DeadLetter": _obj({"id": STR, "queue": STR, "reason": STR, "failed_at": NUM,
                        "task": STR_OR_NULL, "task_id": STR_OR_NULL, "args": {},
                        "kwargs": {}, "body": STR, "size": NUM,
                        "truncated": {"type": "boolean", "description": "args, kwargs or body "
                                      "cut short; GET /api/dead-letters/body has the whole"}}),
    "DeadLetterAction": _obj({"queue": STR, "ids": {"type": ["array", "null"], "items": STR}},
                             ["queue"]),
}


def _paths() -> dict[str, Any]:
    action = {"name": "X-Conveyor-Action", "in": "header", "required": True,
              "description": "any value; guards against cross-site form posts",
              "schema": STR}
    return {
        "/api/overview": {"get": {
            "summary": "Throughput, outcome rates and latency percentiles, with chart series",
            "parameters": [WINDOW], "responses": _ok(_ref("Overview"))}},
        "/api/status": {"get": {
            "summary": "Is it working: workers online and offline, queue depths and the "
                       "oldest waiting message's age, dead letters, beat's leader and next "
                       "ticks (the overview's top)",
            "responses": _ok(_ref("Status"))}},
        "/api/workers": {"get": {
            "summary": "Workers heard from in the last hour (offline ones flagged)",
            "responses": _ok(_obj({"workers": {"type": "array", "items": _ref("Worker")}}))}},
        "/api/queues": {"get": {
            "summary": "Live depths per queue and per-minute history",
            "parameters": [WINDOW], "responses": _ok(_obj({
                "queues": {"type": "array", "items": _ref("QueueDepth")},
                "history": {"type": "object", "additionalProperties": {"type": "array"}}}))}},
        "/api/tasks": {"get": {
            "summary": "Search the recent-task index (newest first)",
            "parameters": [
                _query("id", "task id or its prefix"),
                _query("name", "part of the task name (case-insensitive)"),
                _query("state", "STARTED, SUCCESS, FAILURE, RETRY, REVOKED or DEAD"),
                _query("queue", "queue name"),
                _query("since", "Unix time: updated at or after", NUM),
                _query("until", "Unix time: updated at or before", NUM),
                _query("limit", "at most this many (1-1000, default 100)", {"type": "integer"}),
            ],
            "responses": {**_ok(_obj({
                "tasks": {"type": "array", "items": _ref("TaskEntry")},
                "complete": {"type": "boolean", "description": "false: only the `searched` "
                             "most recent tasks were looked at; older ones may match (search "
                             "again with until=oldest)"},
                "searched": NUM, "oldest": NUM})),
                "400": {"description": "a malformed parameter (named in the error)"}}}},
        "/api/tasks/running": {"get": {
            "summary": "Tasks running on online workers, with progress from update_state",
            "responses": _ok(_obj({"tasks": {"type": "array",
                                             "items": _ref("RunningTask")}}))}},
        "/api/tasks/{task_id}": {"get": {
            "summary": "One task: arguments, result or traceback, family and timeline",
            "parameters": [TASK_ID],
            "responses": {**_ok(_ref("TaskDetail")), "404": {"description": "unknown task"}}}},
        "/api/tasks/{task_id}/record": {"get": {
            "summary": "The task's stored record, whole (the task page shows values cut "
                       "short when `truncated` is true)",
            "parameters": [TASK_ID],
            "responses": {"200": {"description": "the record as stored", "content": {
                "application/octet-stream": {"schema": STR}}},
                "404": {"description": "no record"}}}},
        "/api/tasks/{task_id}/{action}": {"post": {
            "summary": "retry (send again as a new task), revoke, or terminate",
            "parameters": [TASK_ID, {"name": "action", "in": "path", "required": True,
                                     "schema": {"type": "string",
                                                "enum": ["retry", "revoke", "terminate"]}},
                           action],
            "responses": {**_ok(_obj({"task_id": STR, "new_task_id": STR})),
                          "403": {"description": "read-only user, or no X-Conveyor-Action"},
                          "409": {"description": "cannot retry (no stored arguments)"}}}},
        "/api/dead-letters": {"get": {
            "summary": "Dead letters, newest first, with reason and body",
            "parameters": [_query("queue", "only this queue"),
                           _query("limit", "at most this many (1-1000, default 100)",
                                  {"type": "integer"})],
            "responses": {**_ok(_obj({"dead_letters": {"type": "array",
                                                       "items": _ref("DeadLetter")}})),
                          "400": {"description": "a malformed parameter"}}}},
        "/api/dead-letters/body": {"get": {
            "summary": "One dead letter's body, whole (the list shows it cut short)",
            "parameters": [_query("queue", "its queue"), _query("id", "its message id")],
            "responses": {"200": {"description": "the body as stored", "content": {
                "application/octet-stream": {"schema": STR}}},
                "404": {"description": "no such letter among the newest 10,000"}}}},
        "/api/dead-letters/{action}": {"post": {
            "summary": "replay (back on the queue) or discard; ids null means all of the queue",
            "parameters": [{"name": "action", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": ["replay", "discard"]}},
                           action],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("DeadLetterAction")}}},
            "responses": {**_ok(_obj({"replayed": NUM, "discarded": NUM})),
                          "403": {"description": "read-only user, or no X-Conveyor-Action"}}}},
        "/api/schedules": {"get": {
            "summary": "Beat entries with last and next run, and the beat lease holder",
            "responses": _ok({"type": "object"})}},
        "/api/me": {"get": {"summary": "The signed-in user and role (admin or readonly)",
                            "responses": _ok(_obj({"user": STR, "role": STR}))}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format)",
                             "responses": {"200": {"description": "metrics", "content": {
                                 "text/plain": {"schema": STR}}}}}},
    }


def openapi_schema() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Conveyor monitor API", "version": "1",
                 "description": "Read the task queue's state and act on it. Every route "
                                "needs HTTP basic auth; actions need an admin user."},
        "security": [{"basic": []}],
        "paths": _paths(),
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
    }
