"""Guarantee 7 across the chord crash window, with a real prefork worker.

The process whose store call completes a chord's join is SIGKILLed right
after the store handed it the parts, before it sent the body.  The join is
made with the completing header's result write (ADR 0033), either in the
header's own process (``slot``) or, for a busy slot's result, in the
worker's supervisor (``supervisor``), which writes it before it acknowledges
the message.  Either way the message is not acknowledged: it is redelivered
(late ack), the store gives the same header index the parts again, and the
body is sent: it runs exactly once, with the values in header order
(docs/decisions/0002-canvas.md).  A crash between "result stored" and
"joined" cannot happen on Redis (one script) and, on stores that join after
writing, is the same redelivery.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import Conveyor, chord
from conveyor.canvas import Signature

from ..integration.processes import Ledger, wait_for
from .harness import LEASE, Workers, wait_ready

APP = "tests.faults.chord_crash_app"


def _check(result_id: str, ledger: Ledger, headers: int) -> None:
    body_runs = ledger.count("end")[result_id]
    assert body_runs == 1, f"the body ran {body_runs} times"
    header_ids = {e[1] for e in ledger.events("end")} - {result_id}
    assert len(header_ids) == headers


def test_a_completer_killed_before_sending_the_body_sends_it_when_redelivered(
        url: str, results_url: str | None, ledger: Ledger, tmp_path: Path) -> None:
    """``slot``: the header's own process dies; the worker replaces it."""
    marker = tmp_path / "killed"
    client = Conveyor("chord-crash-client", broker=url, backend=results_url,
                      set_as_current=False)
    workers = Workers(url, ledger, tmp_path, app=APP, results=results_url)
    try:
        proc = workers.start("-c", "2", env={"CHORD_CRASH_MARKER": str(marker),
                                             "CHORD_CRASH_IN_SLOT": "1"})
        wait_ready(workers, proc)
        sig = chord([Signature(f"{APP}.part", (i,), app=client) for i in range(4)],
                    Signature(f"{APP}.total", app=client), app=client)
        result = sig.apply_async()
        assert result.get(timeout=LEASE * 10) == 0 + 1 + 2 + 3
        assert marker.exists(), "no worker process died after completing the join"
        assert proc.poll() is None, "the worker itself must survive its child's death"
        _check(result.id, ledger, 4)
        wait_for(lambda: client.broker.stats(["default"])[0].inflight == 0, LEASE * 5,
                 "the redelivered header to be acknowledged")
    finally:
        workers.stop_all()
        client.close()


def test_a_supervisor_killed_after_joining_for_its_slots_loses_no_body(
        url: str, results_url: str | None, ledger: Ledger, tmp_path: Path) -> None:
    """``supervisor``: eight headers queued before a one-slot worker starts fill
    two prefetch batches of four, so every result is left to the supervisor
    (ADR 0029), whose write completes the join; it dies there, before the acks.
    A second worker gets the messages back after their lease and the
    completer's rerun sends the body."""
    if url.startswith(("postgresql", "amqp")):
        pytest.skip("results are written by each run there (no hand-off to the supervisor)")
    marker = tmp_path / "killed"
    client = Conveyor("chord-crash-client", broker=url, backend=results_url,
                      set_as_current=False)
    workers = Workers(url, ledger, tmp_path, app=APP, results=results_url)
    try:
        sig = chord([Signature(f"{APP}.part", (i,), app=client) for i in range(8)],
                    Signature(f"{APP}.total", app=client), app=client)
        result = sig.apply_async()
        first = workers.start("-c", "1", env={"CHORD_CRASH_MARKER": str(marker)},
                              worker_prefetch_multiplier=4)
        wait_for(lambda: first.poll() is not None, LEASE * 10,
                 "the supervisor to die after completing the join")
        assert marker.exists(), "the worker ended without completing the join"
        assert ledger.count("end")[result.id] == 0, "the body ran before the crash"
        workers.start("-c", "1", env={"CHORD_CRASH_MARKER": str(marker)})
        assert result.get(timeout=LEASE * 10) == sum(range(8))
        _check(result.id, ledger, 8)
        wait_for(lambda: client.broker.stats(["default"])[0].inflight == 0, LEASE * 5,
                 "the redelivered headers to be acknowledged")
    finally:
        workers.stop_all()
        client.close()
