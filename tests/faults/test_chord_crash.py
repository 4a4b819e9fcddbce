"""Guarantee 7 across the chord crash window, with a real prefork worker.

The header task that completes a chord's join is SIGKILLed right after
``chord_add`` handed it the parts, before it sent the body.  Its message is
redelivered (late ack); the store gives the same header index the parts
again, so the body is sent: it runs exactly once, with the values in header
order (docs/decisions/0002-canvas.md).
"""

from __future__ import annotations

from pathlib import Path

from conveyor import Conveyor, chord
from conveyor.canvas import Signature

from ..integration.processes import Ledger, wait_for
from .harness import LEASE, Workers, wait_ready

APP = "tests.faults.chord_crash_app"


def test_a_completer_killed_before_sending_the_body_sends_it_when_redelivered(
        url: str, results_url: str | None, ledger: Ledger, tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    client = Conveyor("chord-crash-client", broker=url, backend=results_url,
                      set_as_current=False)
    workers = Workers(url, ledger, tmp_path, app=APP, results=results_url)
    try:
        proc = workers.start("-c", "2", env={"CHORD_CRASH_MARKER": str(marker)})
        wait_ready(workers, proc)
        sig = chord([Signature(f"{APP}.part", (i,), app=client) for i in range(4)],
                    Signature(f"{APP}.total", app=client), app=client)
        result = sig.apply_async()
        assert result.get(timeout=LEASE * 10) == 0 + 1 + 2 + 3
        assert marker.exists(), "no worker process died after completing the join"
        assert proc.poll() is None, "the worker itself must survive its child's death"
        body_runs = ledger.count("end")[result.id]
        assert body_runs == 1, f"the body ran {body_runs} times"
        header_ids = {e[1] for e in ledger.events("end")} - {result.id}
        assert len(header_ids) == 4
        wait_for(lambda: client.broker.stats(["default"])[0].inflight == 0, LEASE * 5,
                 "the redelivered header to be acknowledged")
    finally:
        workers.stop_all()
        client.close()
