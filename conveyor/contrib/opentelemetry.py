"""OpenTelemetry traces for Conveyor: a producer span per send, a consumer span per run.

    from conveyor.contrib.opentelemetry import ConveyorInstrumentor

    ConveyorInstrumentor().instrument(tracer_provider=provider)   # or the global one

Built only on ``opentelemetry-api`` (the ``otel`` extra) and Conveyor's
Celery signals, following the OpenTelemetry semantic conventions for
messaging: ``send <queue>`` (kind PRODUCER, ``messaging.operation.type`` =
``send``) opens in ``before_task_publish`` and closes in
``after_task_publish``; ``process <queue>`` (kind CONSUMER, ``process``)
opens in ``task_prerun`` and closes in ``task_postrun``.  Both carry
``messaging.system`` = ``conveyor``, ``messaging.destination.name`` (the
queue) and ``messaging.message.id`` (the task id).

The trace context travels in the message headers (``traceparent`` /
``tracestate``, through the configured OTel propagator): a header a
``before_task_publish`` receiver adds reaches ``self.request.headers``.
The consumer span is the current span for the whole run, so everything a
task sends (a chain's next step, a retry, a chord's body, a group's
members) is a child of the run that sent it, in the same trace:

* a retry: failed run -> ``send`` -> the retry's ``process``;
* a chain: step 1's ``process`` -> ``send`` -> step 2's ``process`` ...;
* a chord: the body is sent by the header run that completes the set, so
  the body's ``process`` descends from that header's, in the same trace as
  every header, and it has a span link to each header's ``process`` span:
  every header stores its span context with its value in the join
  (:mod:`conveyor._part_context`), and the body's messages carry them all.

The span is current inside ``async def`` tasks too: ``asyncio.run`` (solo,
threads, prefork) and ``run_coroutine_threadsafe`` (the ``async`` pool's
shared loop) both start the coroutine in a copy of the calling thread's
context variables, where ``task_prerun`` attached it.  Prefork children
inherit the receivers; configure the SDK's exporters in
``worker_process_init`` as for any forking server.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from conveyor import __version__, signals
from conveyor import _part_context as part_context
from conveyor._context import Request

SYSTEM = "conveyor"
_OPEN_SENDS_MAX = 10_000  # a send whose after_task_publish never came (it raised)


def _attributes(queue: str | None, task_id: str | None, operation: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"messaging.system": SYSTEM,
                             "messaging.operation.type": operation,
                             "messaging.operation.name": operation}
    if queue:
        attrs["messaging.destination.name"] = queue
    if task_id:
        attrs["messaging.message.id"] = task_id
    return attrs


def _send_key(headers: dict[str, Any]) -> tuple[str, int]:
    return str(headers.get("id")), int(headers.get("retries") or 0)


class ConveyorInstrumentor:
    """Connects the tracing receivers to Conveyor's signals (``instrument``/``uninstrument``)."""

    def __init__(self) -> None:
        self._tracer: trace.Tracer | None = None
        self._lock = threading.Lock()
        # open sends by (task id, retries): a retry of a message whose own send is
        # still closing (another thread already ran it) has the same id
        self._sending: dict[tuple[str, int], Span] = {}
        self._running: dict[tuple[str, int], tuple[Span, object]] = {}

    @property
    def is_instrumented(self) -> bool:
        return self._tracer is not None

    def instrument(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        """Start tracing (idempotent); ``tracer_provider`` defaults to the global one."""
        if self._tracer is not None:
            return
        self._tracer = trace.get_tracer(__name__, __version__, tracer_provider=tracer_provider)
        for signal, receiver in self._receivers():
            signal.connect(receiver, weak=False)
        part_context.add_provider(self._header_context)

    def uninstrument(self) -> None:
        """Stop tracing; spans already open end normally."""
        for signal, receiver in self._receivers():
            signal.disconnect(receiver)
        part_context.remove_provider(self._header_context)
        self._tracer = None

    @staticmethod
    def _header_context() -> dict[str, str]:
        """The running chord header's span context, kept with its value for the body."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier

    @staticmethod
    def _header_links(headers: dict[str, Any]) -> list[trace.Link]:
        """A link to each chord header's ``process`` span (only a chord body has any)."""
        links = []
        for part in part_context.parts_of(headers):
            context = trace.get_current_span(propagate.extract(part)).get_span_context()
            if context.is_valid:
                links.append(trace.Link(context, {"conveyor.link": "chord_header"}))
        return links

    def _receivers(self) -> list[tuple[Any, Any]]:
        return [(signals.before_task_publish, self._before_publish),
                (signals.after_task_publish, self._after_publish),
                (signals.task_prerun, self._prerun),
                (signals.task_retry, self._retry),
                (signals.task_failure, self._failure),
                (signals.task_postrun, self._postrun)]

    # -- producer --------------------------------------------------------------
    def _before_publish(self, sender: Any = None, headers: dict[str, Any] | None = None,
                        routing_key: str | None = None, **_: Any) -> None:
        if self._tracer is None or headers is None:
            return
        task_id = headers.get("id")
        span = self._tracer.start_span(
            f"send {routing_key}", kind=SpanKind.PRODUCER,
            attributes={**_attributes(routing_key, task_id, "send"),
                        "conveyor.task.name": str(sender)})
        propagate.inject(headers, context=trace.set_span_in_context(span))
        if task_id is None:
            span.end()
            return
        with self._lock:
            if len(self._sending) >= _OPEN_SENDS_MAX:
                self._sending.pop(next(iter(self._sending))).end()
            self._sending[_send_key(headers)] = span

    def _after_publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        with self._lock:
            span = self._sending.pop(_send_key(headers or {}), None)
        if span is not None:
            span.end()

    # -- consumer --------------------------------------------------------------
    def _prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if self._tracer is None or task_id is None:
            return
        request: Request = sender.request
        queue = request.delivery_info.get("queue")
        headers = dict(request.headers or {})
        span = self._tracer.start_span(
            f"process {queue}", context=propagate.extract(headers), kind=SpanKind.CONSUMER,
            links=self._header_links(headers),
            attributes={**_attributes(queue, task_id, "process"),
                        "conveyor.task.name": str(request.task),
                        "conveyor.task.retries": request.retries,
                        "conveyor.task.root_id": str(request.root_id)})
        token = otel_context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._running[(task_id, threading.get_ident())] = (span, token)

    def _current(self, task_id: str | None) -> Span | None:
        held = self._running.get((task_id or "", threading.get_ident()))
        return held[0] if held else None

    def _retry(self, request: Request | None = None, reason: Any = None, **_: Any) -> None:
        span = self._current(request.id if request else None)
        if span is not None:
            span.add_event("retry", {"conveyor.retry.reason": str(reason)})

    def _failure(self, task_id: str | None = None, exception: BaseException | None = None,
                 **_: Any) -> None:
        span = self._current(task_id)
        if span is not None and exception is not None:
            span.record_exception(exception)
            span.set_status(Status(StatusCode.ERROR, type(exception).__name__))

    def _postrun(self, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
        with self._lock:
            held = self._running.pop((task_id or "", threading.get_ident()), None)
        if held is None:
            return
        span, token = held
        if state:
            span.set_attribute("conveyor.task.state", state)
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]


__all__ = ["SYSTEM", "ConveyorInstrumentor"]
