"""Event store implementations (see :mod:`conveyor._events` for what they keep).

``memory`` for tests, ``sqlite`` beside the embedded broker, ``postgres``
beside a PostgreSQL broker (one database for everything), ``redis`` for
scale-out; :func:`conveyor._events.store_from_url` picks one by URL scheme
through :data:`EVENT_STORES`.  Each module documents its storage layout at
the top.
"""

from __future__ import annotations

import json
from typing import Any

from conveyor.schemes import Family

_REDIS = "conveyor.eventstores.redis:RedisEventStore"
_POSTGRES = "conveyor.eventstores.postgres:PostgresEventStore"

#: Scheme → event store class, called as ``cls(url, retention, options=options)``
#: (``options``: the Redis client options of the store's URL; others ignore them).
#: Third-party stores register under the ``conveyor.event_stores`` entry-point group.
EVENT_STORES = Family("event store", "conveyor.event_stores", {
    "memory": "conveyor.eventstores.memory:MemoryEventStore",
    "sqlite": "conveyor.eventstores.sqlite:SQLiteEventStore",
    "postgresql": _POSTGRES, "postgres": _POSTGRES,
    "redis": _REDIS, "rediss": _REDIS, "unix": _REDIS, "sentinel": _REDIS,
    "redis+cluster": _REDIS,
}, hint="events need sqlite, postgresql, redis or memory")


def worker_view(info: dict[str, Any], now: float) -> dict[str, Any]:
    """A stored heartbeat as the monitor reads it: with ``online`` decided here."""
    beat = float(info.get("heartbeat_at") or 0)
    ttl = float(info.get("ttl") or 10)
    online = info.get("offline_at") is None and now - beat <= ttl
    return {**info, "online": online}


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def dumps(doc: Any) -> str:
    """Compact JSON; one encoder for all calls (``json.dumps`` with options builds
    an encoder per call)."""
    return _ENCODER.encode(doc)

__all__ = ["EVENT_STORES"]
