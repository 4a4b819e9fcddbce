"""Which transport options each Redis store shares, readable without the Redis client.

``conveyor._config`` decides what a result store or event store inherits
from the broker's options, and must load when the ``redis`` extra is not
installed; so these rules live here rather than in :mod:`conveyor._redis`.
The cluster scheme and the sharding options are here too, so that reading a
plain ``redis://`` URL does not load the cluster and shard modules (each
worker process would hold them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["CLUSTER_SCHEME", "SHARD_OPTIONS", "connection_options", "explicit_prefix"]

#: A Redis Cluster URL's scheme (:mod:`conveyor._redis_cluster`).
CLUSTER_SCHEME = "redis+cluster"
#: The transport options that shard the broker's queues (:mod:`conveyor._redis_shards`).
SHARD_OPTIONS = ("queue_shards", "queue_shard_map")

# Celery's Redis transport options that have no meaning here: said once, then ignored.
_CELERY_ONLY = {
    "visibility_timeout": "leases replace it (broker_lease_timeout, renewed while a task runs)",
    "fanout_prefix": "Conveyor has no fanout exchanges",
    "fanout_patterns": "Conveyor has no fanout exchanges",
    "sep": "priority queues are separate keys, not name suffixes",
    "queue_order_strategy": "queues are always read in the order the worker lists them",
    "max_retries": "connection retries are the worker's job",
    "interval_start": "connection retries are the worker's job",
    "interval_step": "connection retries are the worker's job",
    "interval_max": "connection retries are the worker's job",
}

# Options that are the broker's own: WAIT after enqueues, the app's priority steps,
# the queues' shards (conveyor._redis_shards).
_BROKER_ONLY = frozenset({"wait_replicas", "wait_timeout", "priority_steps", *SHARD_OPTIONS})


def connection_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """What every Redis store takes from a set of transport options: where and how
    to connect (TLS, timeouts, Sentinel, pool size) and the key ``prefix``.

    The broker's own options (``wait_replicas``, ``priority_steps``) and
    Celery's ignored ones (the broker already said so) are left out, so a
    result store, event store or control channel opened beside the broker
    reads the broker's options exactly as the broker does.
    """
    return {key: value for key, value in options.items()
            if key not in _BROKER_ONLY and key not in _CELERY_ONLY}


def explicit_prefix(url: str, options: Mapping[str, Any]) -> str | None:
    """The key prefix ``options`` or the URL's ``?prefix=`` set, if either does."""
    if options.get("prefix"):
        return str(options["prefix"])
    query = urlsplit(url.split(";", 1)[0]).query
    found = [value for key, value in parse_qsl(query, keep_blank_values=True) if key == "prefix"]
    return found[-1] if found else None
