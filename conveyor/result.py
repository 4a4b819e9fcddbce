"""Handles on task outcomes: ``AsyncResult``, ``GroupResult``, ``ResultSet``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.exceptions import TaskRevokedError, TimeoutError
from conveyor.results.record import ResultRecord
from conveyor.serialization import dumps_json

if TYPE_CHECKING:
    from conveyor.app import Conveyor


class AsyncResult:
    """The outcome of one task id, read from the result store."""

    def __init__(self, id: str, app: Conveyor | None = None, task_name: str | None = None,
                 parent: AsyncResult | None = None) -> None:
        from conveyor._state import current_app

        self.id = id
        self.app = app or current_app()
        self.task_name = task_name
        self.parent = parent
        self._cache: ResultRecord | None = None

    task_id = property(lambda self: self.id)

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
    def date_done(self) -> float | None:
        record = self._record()
        return record.date_done if record else None

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
    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float = 0.5, disable_sync_subtasks: bool = True) -> Any:
        """Wait for the task and return its value (or raise its exception).

        ``interval`` is accepted for Celery compatibility and ignored: stores
        wake the waiter when the result is written.
        """
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
        stored = self.app.backend.wait(self.id, timeout)
        if stored is None or not stored.ready:
            state = stored.state if stored else states.PENDING
            raise TimeoutError(
                f"task {self.id} did not finish within {timeout}s (state {state})"
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
    """Several results waited on together."""

    def __init__(self, results: Sequence[AsyncResult], app: Conveyor | None = None) -> None:
        self.results = list(results)
        self.app = app or (self.results[0].app if self.results else None)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def add(self, result: AsyncResult) -> None:
        if result not in self.results:
            self.results.append(result)

    def _states(self) -> list[str]:
        if not self.results:
            return []
        stored = self.results[0].app.backend.get_many([r.id for r in self.results])
        return [s.state if s else states.PENDING for s in stored]

    def completed_count(self) -> int:
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
            interval: float = 0.5) -> list[Any]:
        """Every value, in order; ``timeout`` bounds the whole wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(timeout=remaining, propagate=propagate))
        return values

    join = get

    def revoke(self, terminate: bool = False) -> None:
        if self.results:
            self.results[0].app.revoke([r.id for r in self.results], terminate=terminate)


class GroupResult(ResultSet):
    """The results of a group, in the group's order, under the group id."""

    def __init__(self, id: str, results: Sequence[AsyncResult], app: Conveyor | None = None,
                 parent: AsyncResult | None = None) -> None:
        super().__init__(results, app)
        self.id = id
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{len(self.results)} tasks]>"

    def save(self) -> GroupResult:
        """Store the membership so :meth:`restore` finds it by id."""
        assert self.app is not None
        body = dumps_json({"results": [r.id for r in self.results]}).encode()
        self.app.backend.save_group(self.id, body, self.app.conf.result_expires)
        return self

    @classmethod
    def restore(cls, id: str, app: Conveyor | None = None) -> GroupResult | None:
        import json

        from conveyor._state import current_app

        owner = app or current_app()
        body = owner.backend.load_group(id)
        if body is None:
            return None
        ids = json.loads(body)["results"]
        return cls(id, [AsyncResult(i, owner) for i in ids], owner)
