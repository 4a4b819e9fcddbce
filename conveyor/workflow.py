"""What happens after a task finishes: callbacks, chain steps, chord joins.

The worker calls :func:`on_success` / :func:`on_failure` after storing the
task's result and before acknowledging its message, so a crash in between
repeats the follow-up (deduplicated where ids are deterministic) instead of
losing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.canvas import Signature

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.message import Message


def on_success(app: Conveyor, message: Message, result: Any) -> None:
    """Send ``link`` callbacks with the result."""
    for data in message.callbacks:
        Signature.from_dict(data, app).apply_async((result,))


def on_failure(app: Conveyor, message: Message, exc: BaseException, traceback: str | None) -> None:
    """Send ``link_error`` callbacks with the failed task's id."""
    for data in message.errbacks:
        Signature.from_dict(data, app).apply_async((message.id,))
