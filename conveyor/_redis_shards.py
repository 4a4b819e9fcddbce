"""Where a sharded Redis Cluster broker keeps each queue (docs/decisions/0027-queue-shards.md).

``queue_shards=N`` (``broker_transport_options``, or ``?queue_shards=N`` in a
``redis+cluster://`` URL) splits one app's queues over ``N`` *shards*.  A
shard is a whole broker keyspace under a hash tag of its own, so every key
of the queues placed on it is in one slot and the broker's Lua scripts run
there unchanged:

* shard 0 is the app's *home* keyspace, ``{conveyor}`` for the default
  prefix: the keys an unsharded broker would use.  Results, chords, events,
  beat state, remote control, beat's leader lease and global rate limits
  stay there, whatever ``N``;
* shard ``i`` (1 ≤ i < N) is the prefix with ``.K`` added inside its tag
  (``{conveyor.3}``), where ``K`` is the first number whose slot lies in a
  part of the slot space no earlier shard's slot lies in: the 16,384 slots
  are cut into ``N`` equal parts, the home slot takes its part, and each
  further shard the next free part, in order.  ``redis-cli --cluster
  create`` gives its ``M`` masters equal runs of slots in order, so with
  ``N = M`` every master serves one shard.  A cluster resharded since can
  be balanced again by moving single slots (``CLUSTER SETSLOT``, ``redis-cli
  --cluster reshard``): each shard is one slot.  The choice depends only on
  the prefix and ``N``, so every producer and worker computes the same one.

A queue lives on the shard ``queue_shard_map`` names for it, else on shard
``crc32(name) mod N``.  Changing ``N`` or the map moves queues to other
keyspaces: drain first, as for a change of prefix.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from conveyor._redis_options import SHARD_OPTIONS
from conveyor.exceptions import ConfigurationError

__all__ = ["SHARD_OPTIONS", "ShardPlan", "shard_plan", "shard_prefixes"]

MAX_SHARDS = 64  # more shards than masters only adds round trips for a consumer of all queues


@dataclass(frozen=True)
class ShardPlan:
    """How many shards, and the queues placed by name rather than by hash."""

    shards: int
    mapping: Mapping[str, int] = field(default_factory=dict)

    def shard_of(self, queue: str) -> int:
        placed = self.mapping.get(queue)
        if placed is not None:
            return placed
        return zlib.crc32(queue.encode()) % self.shards


def shard_plan(url: str, options: dict[str, Any]) -> ShardPlan | None:
    """The plan ``options`` (taken out of them) or the URL's query ask for; None for
    an unsharded broker."""
    raw_shards = options.pop("queue_shards", None)
    raw_map = options.pop("queue_shard_map", None)
    if raw_shards is None:
        query = dict(parse_qsl(urlsplit(url).query))
        raw_shards = query.get("queue_shards")
    if raw_shards is None and raw_map is None:
        return None
    shards = _count(raw_shards)
    mapping = _mapping(raw_map, shards)
    if shards == 1 and mapping:
        raise ConfigurationError("queue_shard_map needs queue_shards of 2 or more")
    return None if shards == 1 else ShardPlan(shards, mapping)


def _count(raw: Any) -> int:
    try:
        shards = int(raw if raw is not None else 1)
    except (TypeError, ValueError):
        raise ConfigurationError(f"queue_shards={raw!r}: use a whole number of shards") from None
    if not 1 <= shards <= MAX_SHARDS:
        raise ConfigurationError(f"queue_shards={shards}: use 1 to {MAX_SHARDS} shards")
    return shards


def _mapping(raw: Any, shards: int) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError("queue_shard_map must map queue names to shard numbers")
    mapping: dict[str, int] = {}
    for queue, shard in raw.items():
        if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < shards:
            raise ConfigurationError(
                f"queue_shard_map[{queue!r}]={shard!r}: use a shard number 0 to {shards - 1} "
                f"(queue_shards={shards})")
        mapping[str(queue)] = shard
    return mapping


def shard_prefixes(prefix: str, shards: int) -> list[str]:
    """Each shard's key prefix, shard 0 being ``prefix`` itself (already a hash tag)."""
    start = prefix.index("{")
    end = prefix.index("}", start + 1)
    tag = prefix[start + 1:end]
    taken = {_part(prefix, shards)}
    out = [prefix]
    number = 0
    for part in range(shards):
        if part in taken:
            continue
        while True:
            number += 1
            candidate = f"{prefix[:start + 1]}{tag}.{number}{prefix[end:]}"
            if _part(candidate, shards) == part and not _near_an_edge(candidate, shards):
                break
        taken.add(part)
        out.append(candidate)
    return out


def _near_an_edge(prefix: str, shards: int) -> bool:
    """Within a few slots of where a part ends: ``redis-cli`` rounds its runs its own way."""
    slot = key_slot(prefix.encode())
    return _part_of(slot - 8, shards) != _part_of(slot + 8, shards)


def _part_of(slot: int, shards: int) -> int:
    slot = min(max(slot, 0), REDIS_CLUSTER_HASH_SLOTS - 1)
    return slot * shards // REDIS_CLUSTER_HASH_SLOTS


def _part(prefix: str, shards: int) -> int:
    """Which of ``shards`` equal runs of slots the prefix's slot falls in."""
    return key_slot(prefix.encode()) * shards // REDIS_CLUSTER_HASH_SLOTS
