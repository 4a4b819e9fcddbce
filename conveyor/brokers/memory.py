"""An in-process broker for tests: the same contract, no server.

State lives in a :class:`_MemoryServer` shared by every broker opened on the
same URL in this process, so an app and an in-process worker see one queue.
It is not shared across processes; use SQLite or Redis for that.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor.brokers.base import (
    MAX_PRIORITY,
    Broker,
    DeadLetter,
    Delivery,
    Envelope,
    QueueStats,
)


@dataclass
class _Stored:
    envelope: Envelope
    seq: int
    deliveries: int = 0
    token: str | None = None
    lease_until: float = 0.0
    delayed: bool = False
    due: float = 0.0
    ready_since: float = 0.0  # sent, or made ready by its ETA or a lapsed lease


@dataclass
class _MemoryServer:
    lock: threading.Condition = field(default_factory=threading.Condition)
    messages: dict[str, _Stored] = field(default_factory=dict)
    ready: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    delayed: list[tuple[float, int, str]] = field(default_factory=list)
    inflight: dict[str, _Stored] = field(default_factory=dict)
    dead: dict[str, list[DeadLetter]] = field(default_factory=dict)
    dead_priority: dict[str, int] = field(default_factory=dict)  # id -> priority, for replay
    keys: dict[str, tuple[str, float]] = field(default_factory=dict)
    revoked: dict[str, tuple[float, bool]] = field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)
    rate_slots: dict[str, float] = field(default_factory=dict)  # name -> next free slot
    seq: itertools.count[int] = field(default_factory=itertools.count)


_SERVERS: dict[str, _MemoryServer] = {}
_SERVERS_LOCK = threading.Lock()


def _server_for(url: str) -> _MemoryServer:
    with _SERVERS_LOCK:
        return _SERVERS.setdefault(url, _MemoryServer())


class MemoryBroker(Broker):
    """In-process broker; see module docstring."""

    def __init__(self, url: str = "memory://", **options: object) -> None:
        # ``options`` (broker_transport_options) configure a client; there is none here.
        self.url = url
        self._s = _server_for(url)

    # -- producing -------------------------------------------------------
    def enqueue(self, envelope: Envelope) -> str:
        return self.enqueue_many([envelope])[0]

    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[str]:
        now = time.time()
        with self._s.lock:
            ids = [self._put(env, now) for env in envelopes]
            self._s.lock.notify_all()
        return ids

    def _put(self, env: Envelope, now: float) -> str:
        if env.id in self._s.messages:
            return env.id
        if env.idempotency_key is not None:
            owner = self._s.keys.get(env.idempotency_key)
            if owner is not None and owner[1] > now:
                return owner[0]
            self._s.keys[env.idempotency_key] = (env.id, now + (env.idempotency_ttl or 86400.0))
        stored = _Stored(env, next(self._s.seq))
        self._s.messages[env.id] = stored
        self._schedule(stored, env.eta, now)
        return env.id

    def _schedule(self, stored: _Stored, eta: float | None, now: float,
                  since: float | None = None) -> None:
        stored.delayed = eta is not None and eta > now
        if eta is not None and stored.delayed:
            stored.due = eta
            heapq.heappush(self._s.delayed, (eta, stored.seq, stored.envelope.id))
        else:
            stored.ready_since = now if since is None else since
            prio = stored.envelope.priority  # lower first (the contract's order)
            queue = self._s.ready.setdefault(stored.envelope.queue, [])
            heapq.heappush(queue, (prio, stored.seq, stored.envelope.id))

    # -- consuming -------------------------------------------------------
    def reserve(
        self, queues: Sequence[str], count: int, lease: float, timeout: float
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._s.lock:
            while True:
                self._maintain(time.time())
                got = self._take(queues, count, lease)
                remaining = deadline - time.monotonic()
                if got or remaining <= 0:
                    return got
                self._s.lock.wait(min(remaining, 0.05))

    def _maintain(self, now: float) -> None:
        """Move due delayed messages to ready and expired leases back."""
        while self._s.delayed and self._s.delayed[0][0] <= now:
            eta, _, mid = heapq.heappop(self._s.delayed)
            stored = self._s.messages.get(mid)
            # Skip stale heap entries: the message was requeued with a new ETA since.
            if stored is not None and stored.delayed and stored.due == eta:
                self._schedule(stored, None, now, since=eta)
        for mid, stored in list(self._s.inflight.items()):
            if stored.lease_until <= now:
                del self._s.inflight[mid]
                stored.token = None
                self._schedule(stored, None, now, since=stored.lease_until)

    def _take(self, queues: Sequence[str], count: int, lease: float) -> list[Delivery]:
        out: list[Delivery] = []
        while len(out) < count:
            best = self._best_queue(queues)
            if best is None:
                break
            _, _, mid = heapq.heappop(self._s.ready[best])
            stored = self._s.messages.get(mid)
            if stored is None or stored.token is not None:
                continue
            out.append(self._lease(stored, lease))
        return out

    def _best_queue(self, queues: Sequence[str]) -> str | None:
        best: str | None = None
        best_prio = MAX_PRIORITY + 1
        for name in queues:
            heap = self._s.ready.get(name)
            if heap and heap[0][0] < best_prio:
                best, best_prio = name, heap[0][0]
        return best

    def _lease(self, stored: _Stored, lease: float) -> Delivery:
        stored.deliveries += 1
        stored.token = uuid.uuid4().hex
        stored.lease_until = time.time() + lease
        env = stored.envelope
        self._s.inflight[env.id] = stored
        return Delivery(env.id, env.queue, env.body, stored.deliveries, stored.token, env.priority)

    def _held(self, delivery: Delivery) -> _Stored | None:
        stored = self._s.inflight.get(delivery.id)
        if stored is None or stored.token != delivery.token:
            return None
        return stored

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        with self._s.lock:
            out = []
            for delivery in deliveries:
                stored = self._held(delivery)
                if stored is not None:
                    del self._s.inflight[delivery.id]
                    del self._s.messages[delivery.id]
                out.append(stored is not None)
            return out

    def requeue(self, delivery: Delivery, delay: float = 0.0, count: bool = False) -> bool:
        with self._s.lock:
            stored = self._held(delivery)
            if stored is None:
                return False
            del self._s.inflight[delivery.id]
            stored.token = None
            if not count:
                stored.deliveries -= 1
            now = time.time()
            self._schedule(stored, now + delay if delay > 0 else None, now)
            self._s.lock.notify_all()
            return True

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        with self._s.lock:
            stored = self._held(delivery)
            if stored is None:
                return False
            del self._s.inflight[delivery.id]
            del self._s.messages[delivery.id]
            letter = DeadLetter(delivery.id, delivery.queue, delivery.body, reason, time.time())
            earlier = self._s.dead.get(delivery.queue, [])
            self._s.dead[delivery.queue] = [d for d in earlier if d.id != delivery.id] + [letter]
            self._s.dead_priority[delivery.id] = stored.envelope.priority
            return True

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        with self._s.lock:
            until = time.time() + lease
            out = []
            for delivery in deliveries:
                stored = self._held(delivery)
                if stored is not None:
                    stored.lease_until = until
                out.append(stored is not None)
            return out

    # -- inspection and repair --------------------------------------------
    def queues(self) -> list[str]:
        with self._s.lock:
            names = {s.envelope.queue for s in self._s.messages.values()}
            return sorted(names | set(self._s.ready) | set(self._s.dead))

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        names = self.queues() if queues is None else list(queues)
        with self._s.lock:
            return [self._stats_one(name) for name in names]

    def _stats_one(self, name: str) -> QueueStats:
        inflight = sum(1 for s in self._s.inflight.values() if s.envelope.queue == name)
        waiting = [s for s in self._s.messages.values() if s.envelope.queue == name and not s.token]
        delayed = sum(1 for s in waiting if s.delayed)
        dead = len(self._s.dead.get(name, []))
        since = min((s.ready_since for s in waiting if not s.delayed), default=None)
        age = 0.0 if since is None else max(0.0, time.time() - since)
        return QueueStats(name, len(waiting) - delayed, delayed, inflight, dead, age)

    def purge(self, queue: str) -> int:
        with self._s.lock:
            doomed = [mid for mid, s in self._s.messages.items()
                      if s.envelope.queue == queue and s.token is None]
            for mid in doomed:
                del self._s.messages[mid]
            self._s.ready.pop(queue, None)
            return len(doomed)

    def dead_letters(self, queue: str, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        with self._s.lock:
            letters = list(reversed(self._s.dead.get(queue, [])))
            return letters[offset:offset + limit]

    def _take_dead(self, queue: str, ids: Sequence[str] | None) -> list[DeadLetter]:
        letters = self._s.dead.get(queue, [])
        wanted = None if ids is None else set(ids)
        taken = [d for d in letters if wanted is None or d.id in wanted]
        self._s.dead[queue] = [d for d in letters if d not in taken]
        return taken

    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        with self._s.lock:
            taken = self._take_dead(queue, ids)
            now = time.time()
            for letter in taken:
                priority = self._s.dead_priority.pop(letter.id, 0)
                self._put(Envelope(letter.id, letter.queue, letter.body, priority), now)
            self._s.lock.notify_all()
            return len(taken)

    def discard_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        with self._s.lock:
            taken = self._take_dead(queue, ids)
            for letter in taken:
                self._s.dead_priority.pop(letter.id, None)
            return len(taken)

    # -- control plane ---------------------------------------------------
    def revoke(self, ids: Sequence[str], ttl: float, terminate: bool = False) -> None:
        with self._s.lock:
            until = time.time() + ttl
            for task_id in ids:
                self._s.revoked[task_id] = (until, terminate)

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        now = time.time()
        with self._s.lock:
            found = {i: self._s.revoked.get(i, (0.0, False)) for i in ids}
            return {i: term for i, (until, term) in found.items() if until > now}

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        with self._s.lock:
            current = self._s.leases.get(name)
            if current is not None and current[0] != holder and current[1] > now:
                return False
            self._s.leases[name] = (holder, now + ttl)
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._s.lock:
            current = self._s.leases.get(name)
            if current is not None and current[0] == holder:
                del self._s.leases[name]

    def lease_holder(self, name: str) -> str | None:
        with self._s.lock:
            current = self._s.leases.get(name)
            if current is None or current[1] <= time.time():
                return None
            return current[0]

    def take_rate_slot(self, limits: Sequence[tuple[str, float]], within: float) -> float:
        with self._s.lock:
            now = time.monotonic()
            slot = max([now, *(self._s.rate_slots.get(name, 0.0) for name, _ in limits)])
            if slot - now <= within:
                for name, interval in limits:
                    self._s.rate_slots[name] = slot + interval
            return slot - now


def reset_memory_brokers() -> None:
    """Forget every in-process broker's state (for test isolation)."""
    with _SERVERS_LOCK:
        _SERVERS.clear()
