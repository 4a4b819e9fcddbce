"""OpenTelemetry spans through the real in-process worker (memory broker).

The shape follows the OpenTelemetry messaging semantic conventions (span
names ``send <queue>`` / ``process <queue>``, kinds PRODUCER / CONSUMER,
``messaging.*`` attributes), as the Celery instrumentation
(opentelemetry-instrumentation-celery) does for Celery's signals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, get_current_span

from conveyor import _part_context as part_context
from conveyor import chain, chord, group
from conveyor.app import Conveyor
from conveyor.contrib.opentelemetry import ConveyorInstrumentor
from conveyor.testing import make_test_app, run_worker


@pytest.fixture
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ConveyorInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        instrumentor.uninstrument()


def _spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The finished spans once there are ``count`` (postrun ends a span after the result)."""
    deadline = time.monotonic() + 10
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    spans = list(exporter.get_finished_spans())
    assert len(spans) == count, [(s.name, s.attributes, s.parent) for s in spans]
    return spans


def _child(spans: list[ReadableSpan], parent: ReadableSpan, name: str) -> ReadableSpan:
    assert parent.context is not None
    found = [s for s in spans if s.parent is not None
             and s.parent.span_id == parent.context.span_id and s.name == name]
    assert len(found) == 1, (name, [(s.name, s.parent) for s in spans])
    return found[0]


def _flow_app() -> Conveyor:
    app = make_test_app("otel")
    attempts: dict[str, int] = {}

    @app.task(name="t.double")
    def double(x: int) -> int:
        return x * 2

    @app.task(name="t.flaky", bind=True, max_retries=3)
    def flaky(self: Any, x: int) -> int:
        attempts[self.request.id] = attempts.get(self.request.id, 0) + 1
        if self.request.retries == 0:
            raise self.retry(exc=ValueError("first try fails"), countdown=0)
        return x + 1

    return app


def test_web_request_chain_with_a_retry_is_one_trace(traced: Any) -> None:
    provider, exporter = traced
    app = _flow_app()
    web = provider.get_tracer("web")
    with run_worker(app, concurrency=2) as worker:
        with web.start_as_current_span("GET /orders") as request_span:
            result = chain(app.tasks["t.double"].s(1), app.tasks["t.flaky"].s(),
                           app.tasks["t.double"].s()).apply_async()
        worker.join()
        assert result.get(timeout=10) == 6
    spans = _spans(exporter, 1 + 2 * 4)  # the web span; send+process for 3 steps and 1 retry
    root = next(s for s in spans if s.name == "GET /orders")
    trace_id = request_span.get_span_context().trace_id
    assert {s.context.trace_id for s in spans if s.context} == {trace_id}
    queue = app.conf.task_default_queue
    send, process = f"send {queue}", f"process {queue}"
    step1 = _child(spans, _child(spans, root, send), process)
    tried = _child(spans, _child(spans, step1, send), process)
    retried = _child(spans, _child(spans, tried, send), process)
    step3 = _child(spans, _child(spans, retried, send), process)
    assert [s.attributes["conveyor.task.name"] for s in (step1, tried, retried, step3)
            if s.attributes] == ["t.double", "t.flaky", "t.flaky", "t.double"]
    assert tried.attributes and tried.attributes["conveyor.task.retries"] == 0
    assert tried.attributes["conveyor.task.state"] == "RETRY"
    assert [e.name for e in tried.events] == ["retry"]
    assert retried.attributes and retried.attributes["conveyor.task.retries"] == 1
    assert retried.attributes["messaging.message.id"] == tried.attributes["messaging.message.id"]
    assert step3.attributes and step3.attributes["conveyor.task.state"] == "SUCCESS"
    sends = [s for s in spans if s.kind is SpanKind.PRODUCER]
    assert len(sends) == 4
    for span in sends:
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "conveyor"
        assert span.attributes["messaging.operation.type"] == "send"
        assert span.attributes["messaging.destination.name"] == queue
    assert step1.kind is SpanKind.CONSUMER
    assert step1.attributes and step1.attributes["messaging.operation.type"] == "process"
    assert step1.attributes["messaging.message.id"] == result.parent.parent.id


@pytest.mark.parametrize("pool", ["solo", "threads", "async"])
def test_async_task_sees_its_span(traced: Any, pool: str) -> None:
    _, exporter = traced
    app = make_test_app("otel-async")

    @app.task(name="t.where")
    async def where() -> str:
        return format(get_current_span().get_span_context().span_id, "016x")

    with run_worker(app, pool=pool, concurrency=1):
        inside = where.delay().get(timeout=10)
    spans = _spans(exporter, 2)
    process = next(s for s in spans if s.kind is SpanKind.CONSUMER)
    assert process.context is not None
    assert inside == format(process.context.span_id, "016x")


def test_chord_body_shares_the_trace_of_its_headers(traced: Any) -> None:
    provider, exporter = traced
    app = make_test_app("otel-chord")

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.total")
    def total(values: list[int]) -> int:
        return sum(values)

    with run_worker(app, concurrency=2) as worker:
        with provider.get_tracer("web").start_as_current_span("POST /report"):
            result = chord([add.s(1, 1), add.s(2, 2), add.s(3, 3)], total.s()).apply_async()
        worker.join()
        assert result.get(timeout=10) == 12
    spans = _spans(exporter, 1 + 2 * 4)
    root = next(s for s in spans if s.name == "POST /report")
    assert len({s.context.trace_id for s in spans if s.context}) == 1
    queue = app.conf.task_default_queue
    headers = [s for s in spans if s.kind is SpanKind.CONSUMER
               and s.attributes and s.attributes["conveyor.task.name"] == "t.add"]
    assert len(headers) == 3
    for header in headers:  # every header was sent from the request
        assert header.parent is not None
        sent = next(s for s in spans if s.context and s.context.span_id == header.parent.span_id)
        assert sent.parent is not None and root.context is not None
        assert sent.parent.span_id == root.context.span_id
    body = [s for s in spans if s.kind is SpanKind.CONSUMER
            and s.attributes and s.attributes["conveyor.task.name"] == "t.total"]
    assert len(body) == 1
    completers = [h for h in headers if any(
        s.parent and h.context and s.parent.span_id == h.context.span_id
        and s.name == f"send {queue}" for s in spans)]
    assert len(completers) == 1  # the body was sent inside the completing header's run
    assert body[0] is _child(spans, _child(spans, completers[0], f"send {queue}"),
                             f"process {queue}")
    # and it links to every header's run, the two that did not send it too
    linked = {link.context.span_id for link in body[0].links}
    assert linked == {h.context.span_id for h in headers if h.context}


def test_a_group_body_links_each_member_to_every_header(traced: Any) -> None:
    """A chord whose body is a group: each member links to every header."""
    _, exporter = traced
    app = make_test_app("otel-chord-group")

    @app.task(name="t.one")
    def one(x: int) -> int:
        return x

    @app.task(name="t.size")
    def size(values: list[int]) -> int:
        return len(values)

    with run_worker(app, concurrency=2) as worker:
        result = chord([one.s(i) for i in range(4)],
                       group(size.s() for _ in range(3))).apply_async()
        worker.join()
        assert result.get(timeout=10) == [4, 4, 4]
    spans = _spans(exporter, 2 * 7)
    headers = {s.context.span_id for s in spans if s.kind is SpanKind.CONSUMER and s.context
               and s.attributes and s.attributes["conveyor.task.name"] == "t.one"}
    members = [s for s in spans if s.kind is SpanKind.CONSUMER
               and s.attributes and s.attributes["conveyor.task.name"] == "t.size"]
    assert len(headers) == 4 and len(members) == 3
    for member in members:
        assert {link.context.span_id for link in member.links} == headers


def test_uninstrument_stops_tracing_and_instrument_is_idempotent() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = make_test_app("otel-off")

    @app.task(name="t.one")
    def one() -> int:
        return 1

    instrumentor = ConveyorInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    instrumentor.instrument(tracer_provider=provider)  # a second call adds no receivers
    with run_worker(app, concurrency=1):
        assert one.delay().get(timeout=10) == 1
        assert len(_spans(exporter, 2)) == 2
        instrumentor.uninstrument()
        assert not instrumentor.is_instrumented
        traced = one.delay()
        assert traced.get(timeout=10) == 1
    assert len(exporter.get_finished_spans()) == 2


def test_part_contexts_reach_a_batched_group_body() -> None:
    """Without publish receivers a group body is sent as one prebuilt batch
    (docs/decisions/0021-batched-canvas-sending.md); the headers' part contexts
    still reach each member's ``request.headers``, in header order."""
    app = make_test_app("part-context")

    ran = threading.local()  # the header's join follows its run on the same thread

    @app.task(name="t.one")
    def one(x: int) -> int:
        ran.x = x
        return x

    @app.task(name="t.seen", bind=True)
    def seen(self: Any, values: list[int]) -> list[str]:
        return [part["n"] for part in part_context.parts_of(self.request.headers)]

    def provider() -> dict[str, str]:
        return {"n": str(ran.x)}

    part_context.add_provider(provider)
    try:
        with run_worker(app, concurrency=1) as worker:
            result = chord([one.s(i) for i in range(3)],
                           group(seen.s() for _ in range(2))).apply_async()
            worker.join()
            assert result.get(timeout=10) == [["0", "1", "2"]] * 2
    finally:
        part_context.remove_provider(provider)
