"""One app's queues spread over the masters of a Redis Cluster (``queue_shards=N``).

Each shard is a whole :class:`~conveyor.brokers.redis.RedisBroker` keyspace
under a hash tag of its own (placement: :mod:`conveyor._redis_shards`), so
every Lua script still touches one slot and keeps its one-round-trip
atomicity; this class only routes (docs/decisions/0027-queue-shards.md):

* a message goes to its queue's shard; ``enqueue_many`` sends one batch per
  shard.  Idempotency keys and stored-id checks are per shard: a key is
  unique among the queues of one shard, not across shards;
* ``reserve`` over queues of one shard is that shard's reserve.  Over
  several it asks the shards in the order of the consumer's queues (each
  shard serving priorities, then queue order, among its own queues), and an
  idle consumer waits on every shard at once (:mod:`conveyor._shard_wait`);
* a delivery's ack, renewal, requeue or dead letter goes to its queue's
  shard; ``stats``, ``queues``, ``purge`` and the dead-letter calls ask the
  shard of each queue;
* revocations are written to every shard, since each shard's reserve checks
  them in Lua while leasing; ``revoked`` asks them all (a write that reached
  only some before a failover still counts);
* beat's leader lease and global rate limits live on shard 0, the app's
  home keyspace, where results, chords, events, beat state and remote
  control are kept too.

Key layout: each shard's keys are those of :mod:`conveyor.brokers.redis`
under its own prefix (``{conveyor}:…`` on shard 0, ``{conveyor.3}:…`` …).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from conveyor._redis_shards import ShardPlan, shard_plan, shard_prefixes
from conveyor._shard_wait import Waiters, wait_for_any
from conveyor.brokers.base import Broker, DeadLetter, Delivery, Envelope, QueueStats
from conveyor.brokers.redis import RedisBroker
from conveyor.exceptions import BrokerError

__all__ = ["ShardedRedisBroker", "cluster_broker"]

T = TypeVar("T")


def cluster_broker(url: str, **options: Any) -> Broker:
    """The broker of a ``redis+cluster://`` URL: sharded when ``queue_shards`` asks."""
    plan = shard_plan(url, options)
    if plan is None:
        return RedisBroker(url, **options)
    return ShardedRedisBroker(url, plan, **options)


class ShardedRedisBroker(Broker):
    """Routes each queue to its shard's :class:`RedisBroker`; see the module docstring."""

    def __init__(self, url: str, plan: ShardPlan, **options: Any) -> None:
        self.url = url
        self.plan = plan
        home = RedisBroker(url, **options)
        self.shards: list[RedisBroker] = [home] + [
            RedisBroker(url, **{**options, "prefix": prefix})
            for prefix in shard_prefixes(home.prefix, plan.shards)[1:]]
        self._waiters = Waiters(plan.shards)

    @property
    def socket_timeout(self) -> float:
        return self.shards[0].socket_timeout

    def shard_for(self, queue: str) -> RedisBroker:
        return self.shards[self.plan.shard_of(queue)]

    def _by_shard(self, items: Sequence[T], queue_of: Callable[[T], str]
                  ) -> dict[int, list[int]]:
        """Positions of ``items`` per shard, shards in order of first appearance."""
        groups: dict[int, list[int]] = {}
        for position, item in enumerate(items):
            groups.setdefault(self.plan.shard_of(queue_of(item)), []).append(position)
        return groups

    # -- producing -------------------------------------------------------
    def enqueue(self, envelope: Envelope) -> str:
        return self.shard_for(envelope.queue).enqueue(envelope)

    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[str]:
        """One batch per shard, in turn; a failure names its shard's server, and
        sending everything again is safe (ids are deduplicated)."""
        owners = [envelope.id for envelope in envelopes]
        for shard, positions in self._by_shard(envelopes, lambda e: e.queue).items():
            got = self.shards[shard].enqueue_many([envelopes[p] for p in positions])
            for position, owner in zip(positions, got, strict=True):
                owners[position] = owner
        return owners

    # -- consuming -------------------------------------------------------
    def reserve(
        self, queues: Sequence[str], count: int, lease: float, timeout: float
    ) -> list[Delivery]:
        """Shards in the order of ``queues``; an idle consumer waits on all of them."""
        if count <= 0 or not queues:
            return []
        groups = self._groups(queues)
        if len(groups) == 1:
            index, shard_queues = groups[0]
            return self.shards[index].reserve(shard_queues, count, lease, timeout)
        deadline = time.monotonic() + max(0.0, timeout)
        got, hint = self._sweep(groups, count, lease, None)
        block_cap = min(self.shards[index].max_block for index, _ in groups)
        while True:
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            block = min(remaining, block_cap, hint if hint is not None else remaining)
            woken = None
            if block >= 0.001:
                waits = [(index, self.shards[index], qs) for index, qs in groups]
                woken = wait_for_any(self._waiters, waits, block)
            got, hint = self._sweep(groups, count, lease, woken)

    def _groups(self, queues: Sequence[str]) -> list[tuple[int, list[str]]]:
        positions = self._by_shard(queues, str)
        return [(index, [queues[p] for p in at]) for index, at in positions.items()]

    def _sweep(self, groups: list[tuple[int, list[str]]], count: int, lease: float,
               woken: int | None) -> tuple[list[Delivery], float | None]:
        """Reserve from each shard until ``count`` are leased, the woken shard first
        (its wake token was taken: its consumers were promised a look).

        A shard that fails is passed over while another has work; with nothing
        leased anywhere its error is raised, so the consumer backs off.
        """
        ordered = sorted(groups, key=lambda group: group[0] != woken)
        got: list[Delivery] = []
        hints: list[float] = []
        failure: BrokerError | None = None
        for index, shard_queues in ordered:
            if len(got) >= count:
                break
            try:
                leased, hint = self.shards[index].reserve_now(shard_queues, count - len(got),
                                                              lease)
            except BrokerError as exc:
                failure = failure or exc
                continue
            got.extend(leased)
            if hint is not None:
                hints.append(hint)
        if failure is not None and not got:
            raise failure
        return got, min(hints, default=None)

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        return self._per_shard(deliveries, lambda shard, part: shard.ack(part))

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        return self._per_shard(deliveries, lambda shard, part: shard.extend(part, lease))

    def _per_shard(self, deliveries: Sequence[Delivery],
                   call: Callable[[RedisBroker, list[Delivery]], list[bool]]) -> list[bool]:
        """One call per shard, every shard tried; answers in the deliveries' order.

        A shard that fails does not keep the others' deliveries from being
        settled; the first failure is raised once they all were tried.
        """
        done = [False] * len(deliveries)
        failure: BrokerError | None = None
        for index, positions in self._by_shard(deliveries, lambda d: d.queue).items():
            try:
                flags = call(self.shards[index], [deliveries[p] for p in positions])
            except BrokerError as exc:
                failure = failure or exc
                continue
            for position, flag in zip(positions, flags, strict=True):
                done[position] = flag
        if failure is not None:
            raise failure
        return done

    def requeue(self, delivery: Delivery, delay: float = 0.0, count: bool = False) -> bool:
        return self.shard_for(delivery.queue).requeue(delivery, delay, count)

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        return self.shard_for(delivery.queue).dead_letter(delivery, reason)

    # -- inspection and repair --------------------------------------------
    def queues(self) -> list[str]:
        """Queues known to any shard (one left on a shard its name no longer maps to,
        after the plan changed, is listed too: its messages wait there)."""
        return sorted({name for shard in self.shards for name in shard.queues()})

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        names = self.queues() if queues is None else list(queues)
        out: list[QueueStats | None] = [None] * len(names)
        for index, positions in self._by_shard(names, str).items():
            found = self.shards[index].stats([names[p] for p in positions])
            for position, stats in zip(positions, found, strict=True):
                out[position] = stats
        return [stats for stats in out if stats is not None]

    def purge(self, queue: str) -> int:
        return self.shard_for(queue).purge(queue)

    def dead_letters(self, queue: str, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return self.shard_for(queue).dead_letters(queue, limit, offset)

    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        return self.shard_for(queue).replay_dead(queue, ids)

    def discard_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        return self.shard_for(queue).discard_dead(queue, ids)

    # -- control plane ---------------------------------------------------
    def revoke(self, ids: Sequence[str], ttl: float, terminate: bool = False) -> None:
        """Written to every shard (each checks its own while leasing); every shard is
        tried before the first failure is raised."""
        failure: BrokerError | None = None
        for shard in self.shards:
            try:
                shard.revoke(ids, ttl, terminate)
            except BrokerError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        """Revoked on any shard; ``terminate`` when any shard says so."""
        found: dict[str, bool] = {}
        for shard in self.shards:
            for task_id, terminate in shard.revoked(ids).items():
                found[task_id] = found.get(task_id, False) or terminate
        return found

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        return self.shards[0].acquire_lease(name, holder, ttl)

    def release_lease(self, name: str, holder: str) -> None:
        self.shards[0].release_lease(name, holder)

    def lease_holder(self, name: str) -> str | None:
        return self.shards[0].lease_holder(name)

    def take_rate_slot(self, limits: Sequence[tuple[str, float]], within: float) -> float:
        return self.shards[0].take_rate_slot(limits, within)

    def ping(self) -> bool:
        return all(shard.ping() for shard in self.shards)

    def close(self) -> None:
        self._waiters.close()
        for shard in self.shards:
            shard.close()
