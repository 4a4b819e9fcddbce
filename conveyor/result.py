"""Handles on task outcomes: ``AsyncResult``, ``GroupResult``, ``ResultSet``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Generic, Literal, overload

from conveyor import states
from conveyor._context import running_request
from conveyor._serialization import dumps_json
from conveyor._typing import R
from conveyor.exceptions import TaskRevokedError, TimeoutError
from conveyor.resultstores.base import Stored
from conveyor.resultstores.record import ResultRecord

if TYPE_CHECKING:
    from conveyor.app import Conveyor


class AsyncResult(Generic[R]):
    """The outcome of one task id, read from the result store.

    Generic in the task's return type for type checkers: ``add.delay(1, 2)``
    is an ``AsyncResult[int]`` whose ``get()`` is an ``int`` (docs/typing.md).
    A bare ``AsyncResult`` means ``AsyncResult[Any]``.
    """

    #: ``time.monotonic()`` when this process sent the task under an id it made
    #: (set by the app's send paths): no result of it is older, which lets the
    #: store skip a read (:meth:`~conveyor.resultstores.base.ResultStore.wait_for_new`).
    _sent: float | None = None

    def __init__(self, id: str, app: Conveyor | None = None, task_name: str | None = None,
                 parent: AsyncResult | GroupResult | None = None) -> None:
        self.id = id
        if app is None:
            from conveyor._state import current_app

            app = current_app()
        self.app = app
        self.task_name = task_name
        self.parent = parent
        self._cache: ResultRecord | None = None

    task_id = property(lambda self: self.id)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without ``_sent``: in another process (or host) that time says
        nothing, and the waiter there reads first, as for any result."""
        state = dict(self.__dict__)
        state.pop("_sent", None)
        return state

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- reading ---------------------------------------------------------
    def _record(self) -> ResultRecord | None:
        if self._cache is not None:
            return self._cache
        stored = self.app.backend.get(self.id)
        if stored is None:
            return None
        record = ResultRecord.decode(stored.payload, self._accept())
        if stored.ready:
            self._cache = record  # ready results do not change
        return record

    def _absorb(self, stored: Stored | None) -> None:
        """Take a record fetched in bulk (by a result set) if it is final."""
        if self._cache is None and stored is not None and stored.ready:
            self._cache = ResultRecord.decode(stored.payload, self._accept())

    def _accept(self) -> list[str]:
        conf = self.app.conf
        return conf.result_accept_content or conf.accept_content

    @property
    def state(self) -> str:
        record = self._record()
        return record.state if record else states.PENDING

    status = state

    @property
    def info(self) -> Any:
        """The value, the exception, or the progress ``meta``, depending on state."""
        record = self._record()
        if record is None:
            return None
        if record.state in states.EXCEPTION_STATES and record.exc_type:
            return record.exception()
        return record.result

    result = info

    @property
    def traceback(self) -> str | None:
        record = self._record()
        return record.traceback if record else None

    @property
    def date_done(self) -> datetime | None:
        """When the task finished, as an aware UTC datetime (as Celery's)."""
        record = self._record()
        if record is None or record.date_done is None:
            return None
        return datetime.fromtimestamp(record.date_done, tz=timezone.utc)

    @property
    def retries(self) -> int:
        record = self._record()
        return record.retries if record else 0

    @property
    def name(self) -> str | None:
        record = self._record()
        return record.task if record and record.task else self.task_name

    @property
    def children(self) -> list[AsyncResult]:
        record = self._record()
        if record is None:
            return []
        return [AsyncResult(child, self.app, parent=self) for child in record.children]

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # -- waiting ---------------------------------------------------------
    @overload
    def get(self, timeout: float | None = None, propagate: Literal[True] = True,
            interval: float = 0.5, disable_sync_subtasks: bool = True) -> R: ...
    @overload
    def get(self, timeout: float | None = None, *, propagate: bool,
            interval: float = 0.5, disable_sync_subtasks: bool = True) -> R | BaseException: ...
    @overload
    def get(self, timeout: float | None, propagate: bool,
            interval: float = 0.5, disable_sync_subtasks: bool = True) -> R | BaseException: ...

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float = 0.5, disable_sync_subtasks: bool = True) -> Any:
        """Wait for the task and return its value (or raise its exception).

        ``interval`` is accepted for Celery compatibility and ignored: stores
        wake the waiter when the result is written.  Inside a running task
        this raises :class:`RuntimeError` unless ``disable_sync_subtasks=False``
        (as Celery: waiting on another task from a task can deadlock a worker).
        """
        if disable_sync_subtasks:
            assert_will_not_block()
        record = self._wait(timeout)
        if record.state == states.SUCCESS:
            return record.result
        if not propagate:
            return record.exception() if record.exc_type else record.result
        if record.state == states.REVOKED:
            raise TaskRevokedError(f"task {self.id} was revoked")
        raise record.exception()

    wait = get

    def _wait(self, timeout: float | None) -> ResultRecord:
        if self._cache is not None:
            return self._cache
        backend = self.app.backend
        stored = (backend.wait(self.id, timeout) if self._sent is None
                  else backend.wait_for_new(self.id, timeout, self._sent))
        if stored is None or not stored.ready:
            state = stored.state if stored else states.PENDING
            hint = _nobody_working(self.app) if state == states.PENDING else ""
            raise TimeoutError(
                f"task {self.id} did not finish within {timeout}s (state {state}){hint}"
            )
        self._cache = ResultRecord.decode(stored.payload, self._accept())
        return self._cache

    # -- control ---------------------------------------------------------
    def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        """Stop the task: skipped if queued; killed if running and ``terminate``."""
        self.app.revoke([self.id], terminate=terminate)

    def forget(self) -> None:
        self.app.backend.forget([self.id])
        self._cache = None


class ResultSet:
    """Several results waited on together, in the order given.

    Members may be :class:`AsyncResult` or, for nested groups, another
    :class:`GroupResult`.  States are read with one bulk query; waiting
    blocks only on members that are not finished yet.
    """

    def __init__(self, results: Sequence[AsyncResult | GroupResult],
                 app: Conveyor | None = None) -> None:
        self.results: list[AsyncResult | GroupResult] = list(results)
        self.app: Conveyor | None = app or (self.results[0].app if self.results else None)

    def __iter__(self) -> Iterator[AsyncResult | GroupResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult | GroupResult:
        return self.results[index]

    def add(self, result: AsyncResult | GroupResult) -> None:
        if result not in self.results:
            self.results.append(result)

    def _states(self) -> list[str]:
        """Each member's state; a nested group counts as its summary state."""
        self._prefetch()
        return [r.state if isinstance(r, AsyncResult) else r._summary() for r in self.results]

    def _summary(self) -> str:
        found = self._states()
        if any(s == states.FAILURE for s in found):
            return states.FAILURE
        if all(s == states.SUCCESS for s in found):
            return states.SUCCESS
        if all(s in states.READY_STATES for s in found):
            return states.REVOKED  # finished, some without a value
        return states.PENDING

    def _prefetch(self) -> None:
        """One bulk read caches every finished member, so waiting skips them."""
        singles = [r for r in self.results if isinstance(r, AsyncResult) and r._cache is None]
        if not singles:
            return
        for result, stored in zip(singles, singles[0].app.backend.get_many(
                [r.id for r in singles]), strict=True):
            result._absorb(stored)

    def completed_count(self) -> int:
        """How many members finished successfully."""
        return sum(1 for s in self._states() if s == states.SUCCESS)

    def ready(self) -> bool:
        return all(s in states.READY_STATES for s in self._states())

    def successful(self) -> bool:
        return all(s == states.SUCCESS for s in self._states())

    def failed(self) -> bool:
        return any(s == states.FAILURE for s in self._states())

    def waiting(self) -> bool:
        return not self.ready()

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float = 0.5, disable_sync_subtasks: bool = True) -> list[Any]:
        """Every value, in order; ``timeout`` bounds the whole wait.

        With ``propagate`` the first failed member (in order) raises.  Inside
        a running task, :class:`RuntimeError` unless ``disable_sync_subtasks=False``.
        """
        if disable_sync_subtasks:
            assert_will_not_block()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._prefetch()
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(timeout=remaining, propagate=propagate,
                                     disable_sync_subtasks=False))
        return values

    join = get

    def revoke(self, terminate: bool = False) -> None:
        if self.app is not None and self.results:
            self.app.revoke(_flat_ids(self.results), terminate=terminate)


class GroupResult(ResultSet):
    """The results of a group, in the group's order, under the group id."""

    def __init__(self, id: str, results: Sequence[AsyncResult | GroupResult],
                 app: Conveyor | None = None,
                 parent: AsyncResult | GroupResult | None = None) -> None:
        super().__init__(results, app)
        self.id = id
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{len(self.results)} tasks]>"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, GroupResult) and other.id == self.id
                and other.results == self.results)

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def children(self) -> list[AsyncResult | GroupResult]:
        return self.results

    @property
    def state(self) -> str:
        return self._summary()

    def save(self) -> GroupResult:
        """Store the membership so :meth:`restore` finds it by id."""
        assert self.app is not None
        save_group(self.app, self.id, [r.id for r in self.results])
        return self

    @classmethod
    def restore(cls, id: str, app: Conveyor | None = None) -> GroupResult | None:
        """The group saved under ``id`` (members as plain results), if still stored."""
        import json

        from conveyor._state import current_app

        owner = app or current_app()
        body = owner.backend.load_group(id)
        if body is None:
            return None
        ids = json.loads(body)["results"]
        return cls(id, [AsyncResult(i, owner) for i in ids], owner)

    def delete(self) -> None:
        """Forget the members' results."""
        if self.app is not None:
            self.app.backend.forget(_flat_ids(self.results))


WOULD_BLOCK = (
    "never call result.get() inside a task: it can deadlock the worker (every slot "
    "waiting on tasks queued behind it); chain the tasks instead, or pass "
    "disable_sync_subtasks=False if you accept the risk"
)


def assert_will_not_block() -> None:
    """Refuse to wait on a result from inside a running task (Celery's rule)."""
    request = running_request()
    if request is not None and not request.is_eager:  # an eager run never waits (as Celery)
        raise RuntimeError(WOULD_BLOCK)


def save_group(app: Conveyor, group_id: str, ids: Sequence[str]) -> None:
    """Store a group's member ids (what :meth:`GroupResult.restore` reads)."""
    app.backend.save_group(group_id, encode_group_ids(ids), app.conf.result_expires)


def encode_group_ids(ids: Sequence[str]) -> bytes:
    """A stored group: its member ids, in order."""
    return dumps_json({"results": list(ids)}).encode()


def _flat_ids(results: Sequence[AsyncResult | GroupResult]) -> list[str]:
    ids: list[str] = []
    for result in results:
        ids.extend(_flat_ids(result.results) if isinstance(result, GroupResult) else [result.id])
    return ids


def __getattr__(name: str) -> Any:
    """``from conveyor.result import EagerResult`` (Celery's import path); it lives in
    conveyor._eager, which needs this module first."""
    if name == "EagerResult":
        from conveyor._eager import EagerResult

        return EagerResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _nobody_working(app: Conveyor) -> str:
    """Why a PENDING task may never start, for the timeout's message.

    The usual cause is no worker on this broker at all (none started, or one
    started against another broker URL: a relative SQLite path read from
    another directory).  Said from the workers' heartbeats; any error while
    looking is swallowed, since the timeout is the error being reported.
    """
    from conveyor._events import store_for

    try:
        online = [w for w in store_for(app).workers() if w.get("online")]
    except Exception:  # a hint must never hide the timeout
        return ""
    where = _broker_place(app.conf.broker_url)
    if not online:
        return (f"; no worker is online on broker {where}: start one "
                f"(conveyor -A {app.main} worker) against the same broker_url")
    served = sorted({q for w in online for q in (w.get("queues") or [])})
    return (f"; {len(online)} worker(s) online on {where}, serving queues "
            f"{', '.join(served) or '(none)'}: is the task routed to one of them?")


def _broker_place(url: str) -> str:
    """The broker's scheme and place, without credentials or options."""
    scheme, _, rest = url.partition("://")
    place = rest.rpartition("@")[2].split("?", 1)[0]
    return f"{scheme}://{place}"

__all__ = ["AsyncResult", "GroupResult", "ResultSet"]
