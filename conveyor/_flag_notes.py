"""Celery command-line flags accepted here without effect, each with its reason.

The command-line twin of :mod:`conveyor._no_effect`: a command line moved
over from Celery keeps working, and the process names every such flag it
was given in one warning when it starts (nothing is accepted silently).
docs/migrating-from-celery.md lists the same flags in its "Command line"
tables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

EVENTS_ON = "task events are always written to the event store (the monitor reads them)"
NO_GOSSIP = ("workers do not gossip: liveness comes from heartbeats in the event store and "
             "revocations from the broker")
NO_MINGLE = "no start-up sync with other workers: revocations are shared in the broker"
HEARTBEAT = ("the worker's heartbeat also renews its task leases, so it cannot be switched off; "
             "worker_heartbeat_interval sets its period")
FAIR = ("each pool slot reserves only when it is free (Celery's 'fair'); with "
        "--prefetch-multiplier > 1 a slot reserves that many for itself, so use 1 for "
        "strict fairness")
SHELVE = ("run history lives in the broker (shared by every beat, guarantee 6), not in a "
          "local shelve file")
EXECUTABLE = "the daemon forks; it does not re-execute Python"

WORKER_NOTES: dict[str, str] = {
    "task_events": f"-E/--task-events: {EVENTS_ON}",
    "without_gossip": f"--without-gossip: {NO_GOSSIP}",
    "without_mingle": f"--without-mingle: {NO_MINGLE}",
    "without_heartbeat": f"--without-heartbeat: {HEARTBEAT}",
    "optimization": f"-O: {FAIR}",
    "executable": f"--executable: {EXECUTABLE}",
}
BEAT_NOTES: dict[str, str] = {
    "schedule_file": f"-s/--schedule: {SHELVE}",
    "executable": f"--executable: {EXECUTABLE}",
}


def given(flags: Mapping[str, Any], notes: Mapping[str, str]) -> list[str]:
    """The notes for the flags in ``flags`` that were set (truthy)."""
    return [note for key, note in notes.items() if flags.get(key)]


def log_notes(command: str, named: list[str]) -> str | None:
    """One warning naming every no-effect flag given; None if none was."""
    if not named:
        return None
    text = f"{command}: {len(named)} flag(s) have no effect in Conveyor: " + "; ".join(named)
    logging.getLogger("conveyor.cli").warning("%s", text)
    return text
