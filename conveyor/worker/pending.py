"""What the supervisor's write-behind buffers share (acks, results).

Items wait in order; a failed write puts its batch back in front and is
tried again a little later, but never past a lease: by then the broker hands
the messages out again, so holding on would only repeat work already lost.
"""

from __future__ import annotations

import logging
import time
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("conveyor.worker")


class LeaseBoundBuffer(Generic[T]):
    """Pending items with the time the oldest arrived and when to retry."""

    #: What the log lines call the write ("acknowledge %d messages", ...).
    what = "write %d items"

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self._pending: list[T] = []
        self._since = 0.0  # when the oldest pending item arrived (monotonic)
        self._retry_at = 0.0  # after a failed write: not before this

    def __len__(self) -> int:
        return len(self._pending)

    def waited(self) -> float:
        """How long the oldest pending item has waited (0 when there is none)."""
        return time.monotonic() - self._since if self._pending else 0.0

    def _add(self, item: T) -> None:
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(item)

    def _take(self) -> list[T]:
        batch, self._pending = self._pending, []
        return batch

    def _keep(self, batch: list[T], exc: Exception) -> None:
        """Retry soon, but not past a lease: by then the messages go out again."""
        what = self.what % len(batch)
        if time.monotonic() - self._since > self.lease:
            log.error("could not %s (%s); their leases will hand them out again", what, exc)
            return
        log.warning("could not %s (%s); retrying", what, exc)
        self._pending = batch + self._pending
        self._retry_at = time.monotonic() + min(1.0, self.lease / 10)
