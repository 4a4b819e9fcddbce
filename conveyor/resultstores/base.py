"""The result store contract: task states and values, keyed by task id.

A store keeps, per task id, the current state (one of ``conveyor.states``)
and an opaque payload (an encoded :class:`~conveyor.resultstores.record.ResultRecord`).
It also keeps group memberships and the chord join: an atomic,
exactly-once "last header result in" signal that replaces Celery's polling
``chord_unlock`` task, and its failure twin, ``chord_fail``.

``tests/contract/result_store_contract.py`` (``ResultStoreContract``, the fence
and the chord join included) checks every implementation: each store's test
module subclasses it.
"""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from conveyor.resultstores.record import Attempt
from conveyor.states import READY_STATES


@dataclass(frozen=True, slots=True)
class Stored:
    """A state and the encoded record behind it."""

    state: str
    payload: bytes

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES


class FencedWrite(NamedTuple):
    """One worker run's result write, as :meth:`ResultStore.set_fenced` takes it."""

    task_id: str
    state: str
    payload: bytes
    attempt: Attempt


class JoinPart(NamedTuple):
    """A chord header's value for its join, as :meth:`ResultStore.chord_add` takes it."""

    chord_id: str
    header: int  # this header's index in the chord
    size: int
    payload: bytes


class Written(NamedTuple):
    """What :meth:`ResultStore.set_many_fenced_and_join` did with one write."""

    stored: bool  # False: refused by the fence, and not joined
    parts: list[bytes] | None  # chord_add's answer: every part when this join completed


class ResultStore(abc.ABC):
    """Results for one app.  Thread-safe; not shared across fork."""

    url: str
    #: Whether the store is built with client options (``cls(url, **options)``,
    #: from ``result_backend_transport_options``); stores that have none are
    #: built as ``cls(url)`` and such options are refused rather than ignored.
    takes_transport_options: ClassVar[bool] = False
    #: Whether :meth:`set_many_fenced` writes a batch in one step (one round
    #: trip or one transaction).  A worker hands results to its supervisor to be
    #: written together only for such stores (conveyor/worker/results.py); for
    #: the others each run writes its own, where its integration hooks wrap it.
    batches_fenced_writes: bool = False

    @abc.abstractmethod
    def set(self, task_id: str, state: str, payload: bytes, ttl: float) -> None:
        """Store the state of ``task_id``; waiters on it wake if it is ready."""

    def set_fenced(self, task_id: str, state: str, payload: bytes, ttl: float,
                   attempt: Attempt) -> bool:
        """Store unless a later run of the same task call already did; True if stored.

        A worker writes through this, so one that was paused past its lease
        cannot replace the newer run's record (docs/decisions/0004).  This
        default reads, compares and writes in three steps; stores override
        it to do them atomically.
        """
        current = self.get(task_id)
        if current is not None and attempt.superseded_by(Attempt.of_payload(current.payload)):
            return False
        self.set(task_id, state, payload, ttl)
        return True

    def set_many_fenced(self, writes: Sequence[FencedWrite], ttl: float) -> list[bool]:
        """:meth:`set_fenced` for each write, in order; True for each one stored.

        Each write is fenced on its own: one refused write does not stop the others.
        """
        return [self.set_fenced(w.task_id, w.state, w.payload, ttl, w.attempt) for w in writes]

    def set_many_fenced_and_join(self, writes: Sequence[tuple[FencedWrite, JoinPart | None]],
                                 ttl: float) -> list[Written]:
        """:meth:`set_many_fenced`, then :meth:`chord_add` for each stored write
        that carries its chord header's join; one :class:`Written` per write.

        A refused write (a later run of the header took over) is not joined:
        that run joins.  The pair is safe to repeat as a whole, as each half
        is (the join counts an index once, and gives a completer's repeat the
        parts again).  This default makes two steps, and a crash between them
        leaves the value stored but not joined: the caller acknowledges the
        message only afterwards, so its redelivered run joins.  Redis does
        both in one script for the whole batch.
        """
        stored = self.set_many_fenced([write for write, _ in writes], ttl)
        return [Written(ok, self.chord_add(join.chord_id, join.header, join.size, join.payload,
                                           ttl) if ok and join is not None else None)
                for (_, join), ok in zip(writes, stored, strict=True)]

    def set_many(self, items: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        """Store several at once (backends batch this)."""
        for task_id, state, payload in items:
            self.set(task_id, state, payload, ttl)

    @abc.abstractmethod
    def get(self, task_id: str) -> Stored | None:
        """The latest state of ``task_id``, or None if nothing was stored."""

    def get_many(self, task_ids: Sequence[str]) -> list[Stored | None]:
        """Several at once, in order."""
        return [self.get(task_id) for task_id in task_ids]

    @abc.abstractmethod
    def wait(self, task_id: str, timeout: float | None) -> Stored | None:
        """Block until ``task_id`` is ready or ``timeout`` passes; return the latest state.

        Implementations must wake on the write, not poll at a fixed short interval.
        """

    def wait_for_new(self, task_id: str, timeout: float | None, sent: float) -> Stored | None:
        """:meth:`wait` for a task this process sent at ``sent`` (``time.monotonic()``)
        under an id it made, so no result of it can be older than that.

        A store may use this to skip a read that can only find what a newer
        write would wake it with anyway (the Redis store: its first ``GET``,
        one round trip off a ``.delay(...).get()``); by default it is :meth:`wait`.
        """
        return self.wait(task_id, timeout)

    @abc.abstractmethod
    def forget(self, task_ids: Sequence[str]) -> None:
        """Delete stored results."""

    @abc.abstractmethod
    def save_group(self, group_id: str, payload: bytes, ttl: float) -> None:
        """Store a group's description (its member ids)."""

    @abc.abstractmethod
    def load_group(self, group_id: str) -> bytes | None:
        """What :meth:`save_group` stored, if it is still there."""

    @abc.abstractmethod
    def chord_add(
        self, chord_id: str, index: int, size: int, payload: bytes, ttl: float
    ) -> list[bytes] | None:
        """Record header result ``index`` of ``size``.

        Returns every header payload in index order to the call that
        completed the set.  Repeated calls for the same index (a redelivered
        header task) do not count twice.  Everyone else gets None, except a
        repeated call for the completing index: it gets the same parts again,
        for as long as they are kept (``ttl``), because its first caller may
        have died before sending the body (the caller then checks whether
        the body already ran; docs/decisions/0002-canvas.md).  A store must
        therefore remember which index completed the join, and keep the parts.
        """

    def chord_fail(self, chord_id: str, ttl: float) -> bool:
        """Close the join of ``chord_id`` because a header member failed.

        Returns True to exactly one caller: the first to close it, and only
        if the set had not completed (fired) already; every later call,
        and a call after the set completed, gets False.  Stores should make
        this atomic with :meth:`chord_add` (close the same record, so that
        ``chord_add`` returns None for a closed chord).  This default uses a
        one-member join as the exactly-once flag: it elects one failing
        caller but does not stop a set that completes anyway (only possible
        when a redelivered header both succeeded and failed).  Every caller
        is that join's index 0, and a repeated completer gets the parts
        again, so each caller offers a token of its own: the winner is the
        one whose token comes back.
        """
        token = uuid.uuid4().bytes
        return self.chord_add(f"{chord_id}:failed", 0, 1, token, ttl) == [token]

    def cleanup(self) -> int:
        """Remove expired entries where the backend does not expire them itself."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def deadline_after(timeout: float | None) -> float | None:
    """Monotonic deadline for a timeout, None meaning forever."""
    return None if timeout is None else time.monotonic() + timeout

__all__ = ["FencedWrite", "JoinPart", "ResultStore", "Stored", "Written", "deadline_after"]
