"""Task failures reach Sentry once per failure, through the real in-process worker.

A real ``sentry_sdk.init`` with a transport that keeps envelopes in memory
(no network).  Compare Sentry's Celery integration, which reports on
Celery's ``task_failure`` path and ignores ``Retry`` (sentry-python,
``sentry_sdk/integrations/celery``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from conveyor.contrib.sentry import ConveyorIntegration
from conveyor.testing import make_test_app, run_worker


class Kept(Transport):
    """Keeps every event in a list instead of sending it."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(event)


@pytest.fixture
def kept() -> Iterator[Kept]:
    transport = Kept()
    sentry_sdk.init(dsn="https://public@sentry.invalid/1", transport=transport,
                    integrations=[ConveyorIntegration()], default_integrations=False,
                    traces_sample_rate=None)
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()  # no DSN: a disabled client for the next test


def _events(kept: Kept, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while len(kept.events) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(kept.events)


def test_one_event_per_failure_not_per_retry(kept: Kept) -> None:
    app = make_test_app("sentry")

    @app.task(name="t.charge", bind=True, max_retries=2, default_retry_delay=0)
    def charge(self: Any, order: int, token: str = "") -> None:
        raise self.retry(exc=ConnectionError(f"card service down for {order}"))

    @app.task(name="t.ok", bind=True, max_retries=2)
    def ok(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=ValueError("once"), countdown=0)
        return "done"

    with run_worker(app, concurrency=1) as worker:
        failed = charge.delay(42, token="s3cr3t-value")
        succeeded = ok.delay()
        worker.join()
        with pytest.raises(ConnectionError):
            failed.get(timeout=10)
        assert succeeded.get(timeout=10) == "done"
    events = _events(kept, 1)
    # the worker has stopped: every report it would make has been made
    assert len(events) == 1, [e.get("exception") for e in events]
    event = events[0]
    (exc,) = event["exception"]["values"]
    assert exc["type"] == "ConnectionError"
    assert exc["mechanism"] == {"type": "conveyor", "handled": False}
    assert event["tags"]["conveyor.task_name"] == "t.charge"
    assert event["tags"]["conveyor.task_id"] == failed.id
    assert event["tags"]["conveyor.retries"] == 2
    assert event["transaction"] == "t.charge"
    task = event["contexts"]["conveyor task"]
    assert task["retries"] == 2
    assert task["args"] == "(42,)"
    assert "s3cr3t-value" not in task["kwargs"] and "token" in task["kwargs"]


def test_trace_id_of_the_current_span_is_a_tag(kept: Kept) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from conveyor.contrib.opentelemetry import ConveyorInstrumentor

    instrumentor = ConveyorInstrumentor()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor.instrument(tracer_provider=provider)
    app = make_test_app("sentry-otel")

    @app.task(name="t.boom")
    def boom() -> None:
        raise RuntimeError("boom")

    try:
        with run_worker(app, concurrency=1), pytest.raises(RuntimeError):
            boom.delay().get(timeout=10)
    finally:
        instrumentor.uninstrument()
    (event,) = _events(kept, 1)
    traces = {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans()
              if s.context}
    assert traces == {event["tags"]["trace_id"]}


def test_redacted_arguments_in_the_event(kept: Kept) -> None:
    """The task's ``redact`` names hide values in dict arguments too (a name that does not
    look secret, which the default masking would miss); ``argsrepr`` is shown as given."""
    app = make_test_app("sentry-redact")
    planted = "card-4242-planted"

    @app.task(name="t.pay", redact=["card"])
    def pay(order: dict[str, Any], card: str) -> None:
        raise RuntimeError("declined")

    with run_worker(app, concurrency=1) as worker:
        first = pay.delay({"id": 7, "card": planted}, card=planted)
        second = pay.apply_async(({"id": 8}, planted), argsrepr="(order 8, <card>)")
        worker.join()
        for result in (first, second):
            with pytest.raises(RuntimeError):
                result.get(timeout=10)
    events = _events(kept, 2)
    contexts = {e["tags"]["conveyor.task_id"]: e["contexts"]["conveyor task"] for e in events}
    assert "'card': '********'" in contexts[first.id]["args"]
    assert "'id': 7" in contexts[first.id]["args"]
    assert contexts[second.id]["args"] == "(order 8, <card>)"
    assert planted not in repr(events)
