"""One trace through real worker processes on each pool (prefork, threads, gevent).

``tests/integration/test_opentelemetry.py`` checks the span shapes on the
in-process worker; here the worker is a separate ``conveyor worker``
process, the context crosses the broker in the message headers, and prefork
children and greenlets each open their run's span.  The web side sends a
chain whose middle step retries once, and a chord of three: the whole
trace hangs off the web request's span, and the chord body links to all
three headers (the OpenTelemetry messaging conventions' fan-in).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor import chain, chord
from conveyor.contrib.opentelemetry import ConveyorInstrumentor

from . import otel_app
from .processes import ROOT, stop, wait_for, worker_env

POOLS = {"prefork": ["-P", "prefork", "-c", "2"], "threads": ["-P", "threads", "-c", "4"],
         "gevent": ["-P", "gevent", "-c", "50"]}


@pytest.fixture
def web() -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    instrumentor = ConveyorInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider
    finally:
        instrumentor.uninstrument()


def _worker(url: str, tmp_path: Path, pool: str, spans: Path) -> subprocess.Popen[bytes]:
    env = worker_env(url, tmp_path / "ledger.txt", result_backend=url)
    env["SPAN_LOG"] = str(spans)
    cmd = [sys.executable, "-m", "conveyor", "-A", "tests.integration.otel_app", "worker",
           "-l", "INFO", *POOLS[pool]]
    with open(tmp_path / "worker.log", "ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("pool", list(POOLS))
def test_one_trace_per_request_across_a_worker_process(
        pool: str, web: TracerProvider, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    otel_app.app.conf.broker_url = url
    otel_app.app.conf.result_backend = url
    spans = tmp_path / "spans.jsonl"
    worker = _worker(url, tmp_path, pool, spans)
    try:
        with web.get_tracer("web").start_as_current_span("GET /orders") as request_span:
            flow = chain(otel_app.double.s(1), otel_app.flaky.s(), otel_app.double.s()).delay()
            fan = chord([otel_app.add.s(i, i) for i in range(3)], otel_app.total.s()).delay()
        assert flow.get(timeout=30) == 6
        assert fan.get(timeout=30) == 6
        # the result is stored before the span ends: wait for all seven runs' spans
        wait_for(lambda: len([s for s in _read(spans) if s["kind"] == "CONSUMER"]) == 8,
                 15, "eight process spans in the worker's span log")
    finally:
        assert stop(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    run = [s for s in _read(spans) if s["kind"] == "CONSUMER"]
    trace_id = format(request_span.get_span_context().trace_id, "032x")
    assert {s["trace"] for s in _read(spans)} == {trace_id}
    states = sorted((s["attributes"]["conveyor.task.name"], s["attributes"]["conveyor.task.state"])
                    for s in run)
    assert states == sorted([("t.double", "SUCCESS"), ("t.flaky", "RETRY"),
                             ("t.flaky", "SUCCESS"), ("t.double", "SUCCESS"),
                             *[("t.add", "SUCCESS")] * 3, ("t.total", "SUCCESS")])
    headers = {s["span"] for s in run if s["attributes"]["conveyor.task.name"] == "t.add"}
    (body,) = [s for s in run if s["attributes"]["conveyor.task.name"] == "t.total"]
    assert set(body["links"]) == headers
    if pool == "prefork":  # the runs happened in the children, not the supervisor
        assert worker.pid not in {s["pid"] for s in run}
