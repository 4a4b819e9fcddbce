"""The app real worker processes load in the tracing tests.

With ``SPAN_LOG`` set (the worker's environment), every finished span is
appended to that file as one JSON line by a span exporter of the test's
own: prefork children, greenlets and threads all write to one file with
``O_APPEND``, so the test reads the worker's whole trace after the run.
The sending side (the test process) instruments with the SDK's in-memory
exporter instead.  Settings come from the environment (``CONVEYOR_*``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from conveyor import Conveyor

app = Conveyor("otel_app")


@app.task(name="t.double")
def double(x: int) -> int:
    return 2 * x


@app.task(name="t.flaky", bind=True)
def flaky(self: object, x: int) -> int:
    if self.request.retries == 0:  # type: ignore[attr-defined]
        raise self.retry(countdown=0)  # type: ignore[attr-defined]
    return x + 1


@app.task(name="t.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="t.total")
def total(values: list[int]) -> int:
    return sum(values)


def _install(path: str) -> None:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from conveyor.contrib.opentelemetry import ConveyorInstrumentor

    def line(span: ReadableSpan) -> str:
        context, parent = span.context, span.parent
        return json.dumps({
            "name": span.name, "kind": span.kind.name, "pid": os.getpid(),
            "trace": format(context.trace_id, "032x") if context else None,
            "span": format(context.span_id, "016x") if context else None,
            "parent": format(parent.span_id, "016x") if parent else None,
            "links": [format(link.context.span_id, "016x") for link in span.links],
            "attributes": dict(span.attributes or {})}) + "\n"

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                for span in spans:
                    os.write(fd, line(span).encode())
            finally:
                os.close(fd)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    ConveyorInstrumentor().instrument(tracer_provider=provider)


if os.environ.get("SPAN_LOG"):
    _install(os.environ["SPAN_LOG"])
