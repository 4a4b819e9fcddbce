"""Celery's ``result_backend_always_retry``: retry store calls that could not connect.

:class:`RetryingResultStore` wraps a store.  A call that failed because the
store could not be reached (the error's cause is a connection error or a
timeout) is repeated after a full-jitter exponential sleep, starting at
``result_backend_base_sleep_between_retries_ms`` and capped at
``result_backend_max_sleep_between_retries_ms``, at most
``result_backend_max_retries`` times, as Celery's backends do.  Other
errors (a refused value, a bad argument) are raised at once.

Every call retried here is safe to repeat: writes store the same value
again, and ``chord_add`` counts a repeated index once (the store contract).
``chord_fail`` is not retried: it answers True to exactly one caller, and a
repeat after a connection broke mid-call could turn that True into False.
``wait`` keeps its own reconnecting loop.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from conveyor.exceptions import BrokerError, ResultError, ResultTooLarge
from conveyor.resultstores.base import FencedWrite, JoinPart, ResultStore, Stored, Written
from conveyor.resultstores.record import Attempt

log = logging.getLogger("conveyor.resultstores")
T = TypeVar("T")


def _unreachable(exc: BaseException) -> bool:
    """Did this store error come from not reaching the store?"""
    if not isinstance(exc, (ResultError, BrokerError)) or isinstance(exc, ResultTooLarge):
        return False
    cause = exc.__cause__
    if isinstance(cause, (ConnectionError, TimeoutError, sqlite3.OperationalError)):
        return True
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(cause, (redis.ConnectionError, redis.TimeoutError))


class RetryingResultStore(ResultStore):
    """A store whose calls ride out connection failures (see the module docstring)."""

    def __init__(self, store: ResultStore, max_retries: float, base: float, cap: float) -> None:
        self.store = store
        self.url = store.url
        self.batches_fenced_writes = store.batches_fenced_writes
        self.max_retries = max_retries
        self.base = base
        self.cap = cap

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except (ResultError, BrokerError) as exc:
                if attempt >= self.max_retries or not _unreachable(exc):
                    raise
                delay = random.uniform(0, min(self.cap, self.base * 2 ** attempt))
                attempt += 1
                log.warning("result store %s failed (%s); retry %d in %.3fs",
                            what, exc, attempt, delay)
                time.sleep(delay)

    def set(self, task_id: str, state: str, payload: bytes, ttl: float) -> None:
        self._call("set", lambda: self.store.set(task_id, state, payload, ttl))

    def set_fenced(self, task_id: str, state: str, payload: bytes, ttl: float,
                   attempt: Attempt) -> bool:
        return self._call("set", lambda: self.store.set_fenced(task_id, state, payload, ttl,
                                                               attempt))

    def set_many_fenced(self, writes: Sequence[FencedWrite], ttl: float) -> list[bool]:
        return self._call("set", lambda: self.store.set_many_fenced(writes, ttl))

    def set_many_fenced_and_join(self, writes: Sequence[tuple[FencedWrite, JoinPart | None]],
                                 ttl: float) -> list[Written]:
        return self._call("set", lambda: self.store.set_many_fenced_and_join(writes, ttl))

    def set_many(self, items: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        self._call("set", lambda: self.store.set_many(items, ttl))

    def get(self, task_id: str) -> Stored | None:
        return self._call("get", lambda: self.store.get(task_id))

    def get_many(self, task_ids: Sequence[str]) -> list[Stored | None]:
        return self._call("get", lambda: self.store.get_many(task_ids))

    def wait(self, task_id: str, timeout: float | None) -> Stored | None:
        return self.store.wait(task_id, timeout)

    def wait_for_new(self, task_id: str, timeout: float | None, sent: float) -> Stored | None:
        return self.store.wait_for_new(task_id, timeout, sent)

    def forget(self, task_ids: Sequence[str]) -> None:
        self._call("forget", lambda: self.store.forget(task_ids))

    def save_group(self, group_id: str, payload: bytes, ttl: float) -> None:
        self._call("save_group", lambda: self.store.save_group(group_id, payload, ttl))

    def load_group(self, group_id: str) -> bytes | None:
        return self._call("load_group", lambda: self.store.load_group(group_id))

    def chord_add(self, chord_id: str, index: int, size: int, payload: bytes,
                  ttl: float) -> list[bytes] | None:
        return self._call("chord_add",
                          lambda: self.store.chord_add(chord_id, index, size, payload, ttl))

    def chord_fail(self, chord_id: str, ttl: float) -> bool:
        return self.store.chord_fail(chord_id, ttl)

    def cleanup(self) -> int:
        return self._call("cleanup", self.store.cleanup)

    def close(self) -> None:
        self.store.close()
