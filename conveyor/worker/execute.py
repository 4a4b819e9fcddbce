"""Running one delivered message: decode, guard, call, record, decide.

:class:`Executor` turns a :class:`~conveyor.brokers.base.Delivery` into an
:class:`Outcome` — what the consumer must tell the broker (ack, requeue,
dead-letter).  It never talks to the broker about the delivery itself; that
keeps the acking policy (batched, fenced) in one place, the consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from conveyor import _hooks as hooks
from conveyor import _signing as signing
from conveyor import _workflow as workflow
from conveyor import signals, states
from conveyor._context import Request, pop_request, push_request
from conveyor._message import Message, MessageDecodeError
from conveyor.app import Conveyor
from conveyor.brokers.base import Delivery
from conveyor.exceptions import (
    ContentDisallowed,
    Ignore,
    MaxRetriesExceededError,
    Reject,
    ResultError,
    ResultTooLarge,
    Retry,
    SerializationError,
    TaskRevokedError,
    TimeLimitExceeded,
)
from conveyor.resultstores.base import FencedWrite, JoinPart, Written
from conveyor.resultstores.record import ResultRecord
from conveyor.task import Task
from conveyor.worker import announce

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")

ACK = "ack"
REQUEUE = "requeue"
DEAD = "dead"
REDELIVER = "redeliver"  # requeue counted as a delivery (max_deliveries ends loops)
HOLD = "hold"  # over a rate limit: keep it, run it ``delay`` seconds from now
ACKED = "acked"  # acknowledged before it ran (acks_late=False): nothing left to settle


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with the delivery, and how the task ended (for counters)."""

    action: str
    state: str | None = None
    reason: str | None = None
    delay: float = 0.0
    runtime: float = 0.0
    #: A successful result left for the supervisor to write, before the ack
    #: (conveyor/worker/results.py); None when the run wrote its own.
    write: FencedWrite | None = None
    #: The chord join to make with :attr:`write` (a header that only joins).
    join: JoinPart | None = None


class Executor:
    """Runs messages for one worker process (or thread pool)."""

    def __init__(self, app: Conveyor, hostname: str, timer: SoftTimer | None = None,
                 run_sync: Callable[[Task, Request], Any] | None = None,
                 gate: Gate | None = None) -> None:
        self.app = app
        self.hostname = hostname
        self.accept = app.conf.accept_content
        self.max_deliveries = app.conf.task_max_deliveries
        self.max_bytes = app.conf.task_message_max_bytes
        self.signing_key = signing.key_for(app.conf)
        self.timer = timer
        self.track_started = app.conf.task_track_started
        self._run_sync = run_sync or call_task
        self.gate = gate  # rate limits (conveyor.worker.ratelimit); None: no task has one
        self._may_hand_off = False  # for the delivery being executed (see execute)
        self._hand_joins = True  # ... and whether a chord header's join may go with it

    # -- entry point -------------------------------------------------------
    def execute(self, delivery: Delivery, revoked: bool = False,
                on_start: OnStart | None = None, hand_off: bool = False,
                joins: bool = True) -> Outcome:
        """Run one delivery end to end and say what to do with it.

        ``on_start(task_name, hard_limit, message)`` is called just before the
        task runs, so a supervisor can enforce the hard time limit.
        ``hand_off``: the caller has more work in hand and a supervisor that
        writes results before it acknowledges, so a success whose write
        nothing here waits for is returned in :attr:`Outcome.write` instead
        of written now (:meth:`_may_defer`); ``joins``: a chord header's join
        may go with it (its taker sends a body the join completes).
        """
        self._may_hand_off = hand_off
        self._hand_joins = joins
        if self.max_bytes is not None and len(delivery.body) > self.max_bytes:
            return announce.rejected(self, delivery, None, Outcome(
                DEAD, reason=f"message body is {len(delivery.body)} bytes, above "
                f"task_message_max_bytes={self.max_bytes}"))
        try:
            message = Message.decode(self._verified(delivery.body), self.accept)
        except signing.SignatureError as exc:
            return Outcome(DEAD, reason=f"refused before decoding: {exc}")
        except ContentDisallowed as exc:
            return announce.rejected(self, delivery, exc, Outcome(
                DEAD, reason=f"content type refused: {exc}"))
        except (MessageDecodeError, SerializationError) as exc:
            return announce.rejected(self, delivery, exc, Outcome(
                DEAD, reason=f"undecodable message: {exc}"))
        if self.gate is not None and not revoked:
            wait = self.gate.hold(message.task, delivery)
            if wait > 0.0:
                return Outcome(HOLD, delay=wait)
        # Hooks wrap every result write about this message (integrations use
        # them for per-task hygiene such as database connections).
        signals.message_prerun.send(self.app, task_id=message.id, task=message.task,
                                    message=message)
        outcome: Outcome | None = None
        try:
            outcome = self._dispatch(message, delivery, revoked, on_start)
            return outcome
        finally:
            signals.message_postrun.send(self.app, task_id=message.id, task=message.task,
                                         message=message,
                                         state=outcome.state if outcome else None)

    def _dispatch(self, message: Message, delivery: Delivery, revoked: bool,
                  on_start: OnStart | None) -> Outcome:
        refusal = self._refuse(message, delivery, revoked)
        if refusal is not None:
            return refusal
        task = self.app.tasks.get(message.task)
        if task is None:
            try:
                task = self.app.get_task(message.task)
            except KeyError as exc:
                announce.unknown(self, message, exc)
                return Outcome(DEAD, reason=f"unknown task {message.task!r}: not registered "
                               f"in this worker (is its module imported or autodiscovered?)")
        announce.received(self, message, delivery)  # as Celery: not for revoked or unknown
        if on_start is not None:
            on_start(message.headers.get("shadow") or task.name,
                     limit_of(message, "time_limit", task.time_limit), message)
        return self._run(task, message, delivery)

    def _refuse(self, message: Message, delivery: Delivery, revoked: bool) -> Outcome | None:
        """Messages that must not run: too many deaths, expired, revoked."""
        limit = self._max_deliveries(message) if delivery.deliveries > 1 else 1
        if delivery.deliveries > limit:
            reason = (f"delivered {delivery.deliveries - 1} times without finishing (its worker "
                      f"died each time); max_deliveries={limit}")
            self._record_failure(message, delivery, reason)
            return Outcome(DEAD, state=states.FAILURE, reason=reason)
        why = _revoked_reason(message, revoked)
        if why is not None:
            self._store(message, delivery, states.REVOKED, result=why)
            workflow.on_revoked(self.app, message, why)
            announce.revoked(self.app, message, Request.from_message(
                message, delivery, self.hostname), expired=why == "expired")
            return Outcome(ACK, state=states.REVOKED, reason=why)
        return None

    def _max_deliveries(self, message: Message) -> int:
        """The call's ``max_deliveries``, else the task's, else the setting."""
        task = self.app.tasks.get(message.task)
        own = task.options.max_deliveries if task is not None else None
        return int(message.headers.get("max_deliveries") or own or self.max_deliveries)

    # -- running -----------------------------------------------------------
    def _run(self, task: Task, message: Message, delivery: Delivery) -> Outcome:
        request = Request.from_message(message, delivery, self.hostname)
        started = time.time()
        announce.prerun(task, request)
        if (task.track_started and not _ignored(task, request)
                and not self.app.store_state(request, states.STARTED, date_started=started)):
            return _superseded(request)
        soft = limit_of(message, "soft_time_limit", task.soft_time_limit)
        token = push_request(request)
        try:
            result = self._call(task, request, soft)
        except BaseException as exc:
            pop_request(token)
            return announce.postrun(task, request, exc,
                                    self._handle_error(task, request, exc, started))
        pop_request(token)
        return announce.postrun(task, request, result,
                                self._succeed(task, request, result, started))

    def _call(self, task: Task, request: Request, soft: float | None) -> Any:
        if soft is None or self.timer is None:
            return self._start(task, request)
        self.timer.arm(soft)
        try:
            return self._start(task, request)
        finally:
            self.timer.disarm()

    def _start(self, task: Task, request: Request) -> Any:
        hooks.before_start(task, request)  # inside the run: what it raises is the outcome
        return self._run_sync(task, request)

    def _succeed(self, task: Task, request: Request, result: Any, started: float) -> Outcome:
        message = request.message
        assert message is not None
        runtime = time.time() - started
        if _ignored(task, request):
            workflow.on_success(self.app, message, result)
            return self._succeeded(task, request, result, runtime)
        try:
            record, write, join = self._success_write(request, result, started)
            left = write is not None and self._may_defer(task, message, join)
            written = None if left else self._write_success(request, record, write, join)
        except (ResultTooLarge, SerializationError) as exc:
            return self._fail(task, request, exc, started, tb.format_exc())
        if written is None:  # the supervisor writes it (joins, and sends a completed body)
            return self._succeeded(task, request, result, runtime, write, join)
        if not written.stored:
            return _superseded(request)
        if join is not None:
            workflow.on_joined(self.app, message, written.parts)
        else:
            workflow.on_success(self.app, message, result)
        return self._succeeded(task, request, result, runtime)

    @staticmethod
    def _succeeded(task: Task, request: Request, result: Any, runtime: float,
                   write: FencedWrite | None = None, join: JoinPart | None = None) -> Outcome:
        """Hooks and the succeeded event, then the outcome (with a write left to
        the supervisor, if any)."""
        hooks.succeeded(task, request, result)
        announce.succeeded(task, request, result, runtime)
        return Outcome(ACK, state=states.SUCCESS, runtime=runtime, write=write, join=join)

    def _success_write(self, request: Request, result: Any, started: float
                       ) -> tuple[ResultRecord, FencedWrite | None, JoinPart | None]:
        """A success's record, its fenced write, and the chord join to make with
        the write: only for a header whose success does nothing but join
        (:func:`~conveyor._workflow.only_joins`), so a join is made only if
        its write is stored (ADR 0033)."""
        assert request.message is not None
        record = self.app.record_for(request, states.SUCCESS, result=result,
                                     date_started=started)
        write = self.app.fenced_write(record)
        join = None
        if write is not None and workflow.only_joins(request.message):
            join = workflow.join_part(self.app, request.message, result)
        return record, write, join

    def _write_success(self, request: Request, record: ResultRecord, write: FencedWrite | None,
                       join: JoinPart | None) -> Written:
        """Store a success now, with its chord join when it carries one (one call).

        ``write`` is the record already encoded: encoding it again costs a
        lone result (the round trip's path) ~15-20 µs."""
        if write is None:
            return Written(self._retrying(lambda: self.app.write_record(record), request,
                                          states.SUCCESS), None)
        if join is None:
            return Written(self._retrying(lambda: self.app.store_fenced(write), request,
                                          states.SUCCESS), None)
        ttl = self.app.conf.result_expires
        return self._retrying(
            lambda: self.app.backend.set_many_fenced_and_join([(write, join)], ttl)[0],
            request, states.SUCCESS)

    def _may_defer(self, task: Task, message: Message, join: JoinPart | None) -> bool:
        """May this success's write be left to the supervisor (written with others,
        before the ack)?  Only when nothing in this process waits for it: the
        write's verdict (the fence, ADR 0004) decides whether follow-ups are sent,
        and Celery runs ``on_success``/``after_return``, ``task_success`` and
        ``task_postrun`` after the result is stored, so with any of them the run
        writes its own result first, as always.  A chord header that only joins
        is left too, with its ``join``: the store joins it only if the write is
        stored, and the supervisor sends the body when that join completed the
        chord (ADR 0033); only with late acks, so that a body the supervisor
        cannot send leaves its header's message to run again.  And only for
        stores that write a batch in one step (``batches_fenced_writes``)."""
        return (self._may_hand_off
                and not signals.task_success.receivers
                and not signals.task_postrun.receivers
                and (not workflow.follows_success(message)
                     or (join is not None and task.acks_late and self._hand_joins))
                and not hooks.overrides(task, "on_success")
                and not hooks.overrides(task, "after_return")
                and self.app.backend.batches_fenced_writes)

    def _handle_error(self, task: Task, request: Request, exc: BaseException,
                      started: float) -> Outcome:
        """Map what the task raised to an outcome."""
        if isinstance(exc, Retry):
            hooks.retried(task, request, exc)
            announce.retried(task, request, exc)
            return Outcome(ACK, state=states.RETRY, runtime=time.time() - started)
        if isinstance(exc, Ignore):
            return Outcome(ACK, runtime=time.time() - started)
        if isinstance(exc, Reject):
            return self._reject(request, exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        trace = tb.format_exc()
        retried = self._autoretry(task, request, exc)
        if retried is not None:
            return retried
        return self._fail(task, request, exc, started, trace)

    def _autoretry(self, task: Task, request: Request, exc: BaseException) -> Outcome | None:
        opts = task.options
        if not opts.autoretry_for or not isinstance(exc, opts.autoretry_for):
            return None
        if opts.dont_autoretry_for and isinstance(exc, opts.dont_autoretry_for):
            return None
        token = push_request(request)
        try:
            task.retry(exc=exc, **opts.retry_kwargs)
        except Retry as again:
            hooks.retried(task, request, again)
            announce.retried(task, request, again)
            return Outcome(ACK, state=states.RETRY)
        except BaseException:
            return None  # retries exhausted: the original error stands
        finally:
            pop_request(token)
        return None

    def _reject(self, request: Request, exc: Reject) -> Outcome:
        if exc.requeue:
            return Outcome(REQUEUE, reason=f"rejected with requeue: {exc.reason}")
        reason = f"rejected by the task: {exc.reason}"
        assert request.message is not None
        self._store(request.message, request.delivery, states.FAILURE, result=reason,
                    exc_type="Reject", exc_module="conveyor.exceptions")
        announce.failed(self.app.tasks.get(request.task or "", request.task), request, exc)
        return Outcome(DEAD, state=states.FAILURE, reason=reason)

    def _fail(self, task: Task, request: Request, exc: BaseException, started: float,
              trace: str) -> Outcome:
        assert request.message is not None
        if isinstance(exc, MaxRetriesExceededError) and exc.__context__ is not None:
            exc = exc.__context__
        shown = request.headers.get("shadow") or task.name  # Celery logs the shadow name
        log.warning("task %s[%s] failed: %r", shown, request.id, exc,
                    extra={"task_name": shown, "task_id": request.id})
        stored = True
        if (not _ignored(task, request) or request.message.chord
                or self.app.conf.task_store_errors_even_if_ignored):
            stored = self._store_final(request, states.FAILURE, exc=exc, traceback=trace,
                                       date_started=started)
        if not stored:
            return _superseded(request)
        workflow.on_failure(self.app, request.message, exc, trace)
        hooks.failed(task, request, exc, trace)
        announce.failed(task, request, exc, trace)
        return failed_outcome(task, exc, time.time() - started)

    def _store_final(self, request: Request, state: str, **fields: Any) -> bool:
        """Write a run's final state, riding out a store outage of up to one lease."""
        return self._retrying(lambda: self.app.store_state(request, state, **fields),
                              request, state)

    def _retrying(self, write: Callable[[], T], request: Request, state: str) -> T:
        """Call ``write`` (safe to repeat) until it succeeds, for up to one lease.

        The task has run; re-running it because the store blinked is worse
        than waiting.  If the store stays away, the error reaches the
        consumer, which hands the message back.
        """
        deadline = time.monotonic() + self.app.conf.broker_lease_timeout
        delay = 0.05
        while True:
            try:
                return write()
            except ResultTooLarge:
                raise
            except ResultError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("could not store %s for %s[%s] (%s); retrying in %.2fs", state,
                            request.task, request.id, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- records for messages that never ran ----------------------------------
    def _store(self, message: Message, delivery: Delivery | None, state: str,
               result: Any = None, **extra: Any) -> None:
        request = Request.from_message(message, delivery, self.hostname)
        self.app.store_state(request, state, result=result, **extra)

    def _record_failure(self, message: Message, delivery: Delivery, reason: str) -> None:
        from conveyor.exceptions import WorkerLostError

        request = Request.from_message(message, delivery, self.hostname)
        self.app.store_state(request, states.FAILURE, exc=WorkerLostError(reason))
        workflow.on_failure(self.app, message, WorkerLostError(reason), None)
        announce.lost(self.app, message, request, WorkerLostError(reason))

    def _verified(self, body: bytes) -> bytes:
        """The body to decode: checked and stripped of its signature when a key is set."""
        return body if self.signing_key is None else signing.verify(body, self.signing_key)

    def message_of(self, body: bytes) -> Message:
        """The message in a delivery's body (its signature checked when a key is set)."""
        return Message.decode(self._verified(body), self.accept)

    def record_killed(self, body: bytes, exc: BaseException, delivery: Delivery) -> None:
        """Record a task the supervisor killed (hard time limit, terminate)."""
        try:
            message = self.message_of(body)
        except SerializationError:
            return
        request = Request.from_message(message, delivery, self.hostname)
        state = states.REVOKED if isinstance(exc, TaskRevokedError) else states.FAILURE
        self.app.store_state(request, state, exc=exc)
        if state == states.FAILURE:
            workflow.on_failure(self.app, message, exc, None)
            task = self.app.tasks.get(message.task)
            if task is not None:  # as Celery's on_timeout: the hooks run in the parent
                hooks.failed(task, request, exc, None)
        announce.killed(self.app, message, request, exc)


def failed_outcome(task: Task, exc: BaseException, runtime: float = 0.0) -> Outcome:
    """What happens to a failed task's message (Celery: worker/request.py on_failure).

    With late acks and ``acks_on_timeout=False`` a task past its hard time
    limit is given back to run again (a counted delivery, so
    ``max_deliveries`` ends a loop); with ``acks_on_failure=False`` any other
    failure rejects it without requeueing, which here means the dead-letter
    queue, with the reason.  Both default to ``acks_on_failure_or_timeout``.
    """
    if not task.acks_late:
        return Outcome(ACK, state=states.FAILURE, runtime=runtime)
    if isinstance(exc, TimeLimitExceeded):
        if task.acks_on_timeout:
            return Outcome(ACK, state=states.FAILURE, runtime=runtime)
        return Outcome(REDELIVER, state=states.FAILURE, runtime=runtime,
                       reason="hard time limit exceeded and acks_on_timeout is off")
    if task.acks_on_failure:
        return Outcome(ACK, state=states.FAILURE, runtime=runtime)
    return Outcome(DEAD, state=states.FAILURE, runtime=runtime,
                   reason=f"failed with {type(exc).__name__} and acks_on_failure is off: {exc}")


def _ignored(task: Task, request: Request) -> bool:
    """No result is stored: the task's option, or ``apply_async(ignore_result=...)``."""
    ignore = request.headers.get("ignore_result") if request.headers else None
    return task.ignore_result if ignore is None else bool(ignore)


class Gate(Protocol):
    """Rate limits: how long a message must wait before its task starts."""

    def hold(self, task: str, delivery: Delivery) -> float: ...
    def forget(self, delivery: Delivery) -> None: ...


class SoftTimer(Protocol):
    """Arms and disarms a soft time limit for the calling thread."""

    def arm(self, seconds: float) -> None: ...
    def disarm(self) -> None: ...


OnStart = Callable[[str, "float | None", Message], None]


def _superseded(request: Request) -> Outcome:
    """A later run of this task call wrote its result: this run's lease was lost.

    Its record and its follow-ups (callbacks, the next chain step) are left
    to that run; the ack that follows is refused by the broker's token check.
    """
    log.warning("task %s[%s]: result refused, a later delivery of the message took over "
                "(this worker held it past its lease)", request.task, request.id,
                extra={"task_name": request.task, "task_id": request.id})
    return Outcome(ACK, reason="superseded by a later delivery")


def _revoked_reason(message: Message, revoked: bool) -> str | None:
    if message.expires is not None and message.expires < time.time():
        return "expired"
    return "revoked" if revoked else None


def limit_of(message: Message, header: str, default: float | None) -> float | None:
    """A per-call limit from the message headers, else the task's (or global) one."""
    value = message.headers.get(header)
    return float(value) if value is not None else default


def call_task(task: Task, request: Request) -> Any:
    """Call the task function; ``async def`` tasks get an event loop of their own."""
    result = task(*request.args, **request.kwargs)
    if asyncio.iscoroutine(result):
        return asyncio.run(result)
    return result
