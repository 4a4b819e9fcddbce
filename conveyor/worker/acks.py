"""Acknowledgements gathered from several consumers and sent a few at a time.

A prefork child that finished a task tells its supervisor (it already
reports every finished task for the lease ledger), and the supervisor
acknowledges on its own connection.  The child saves one broker round trip
per task, and the supervisor sends one ``ack`` call per few milliseconds
for all its children instead of one per task.

The ack stays late: a message is only acknowledged after its task finished
and its result was written.  If the supervisor dies before sending, the
messages are handed out again when their leases run out (the results are
already fenced by attempt), so nothing is lost; the price is that the few
tasks finished in the last milliseconds may run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from conveyor.brokers.base import Broker, Delivery
from conveyor.exceptions import BrokerError
from conveyor.worker.pending import LeaseBoundBuffer

log = logging.getLogger("conveyor.worker")


class AckBuffer(LeaseBoundBuffer[Delivery]):
    """Pending acknowledgements, flushed once the oldest has waited ``delay`` s."""

    what = "acknowledge %d messages"

    def __init__(self, broker: Callable[[], Broker], lease: float, delay: float = 0.005,
                 max_batch: int = 500) -> None:
        super().__init__(lease)
        self._broker = broker
        self.delay = delay
        self.max_batch = max_batch

    def add(self, delivery: Delivery) -> None:
        self._add(delivery)

    def wait_time(self, cap: float) -> float:
        """How long the caller may block before :meth:`flush_due` has work."""
        if not self._pending:
            return cap
        due = max(self._since + self.delay, self._retry_at)
        return max(0.0, min(cap, due - time.monotonic()))

    def flush_due(self) -> None:
        """Flush if the oldest ack has waited long enough or the batch is full."""
        if not self._pending:
            return
        now = time.monotonic()
        if now < self._retry_at:
            return
        if len(self._pending) >= self.max_batch or now - self._since >= self.delay:
            self.flush()

    def flush(self) -> bool:
        """Send every pending ack now; on a broker error keep them for later.

        Returns whether nothing is left pending.
        """
        if not self._pending:
            return True
        batch = self._take()
        try:
            held = self._broker().ack(batch)
        except BrokerError as exc:
            self._keep(batch, exc)
            return False
        self._retry_at = 0.0
        refused = [d.id for d, ok in zip(batch, held, strict=True) if not ok]
        if refused:
            log.warning("ack of %s refused: its lease had lapsed and the message went to "
                        "another consumer", ", ".join(refused[:5]))
        return True
