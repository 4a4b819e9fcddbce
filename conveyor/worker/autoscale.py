"""``--autoscale=MAX,MIN``: the pool grows with the work waiting and shrinks when idle.

Celery's rule (celery/worker/autoscale.py), kept: the wanted size is the work
at hand capped at MAX; the pool grows to it at once, and shrinks toward it
(never below MIN) only after ``keepalive`` seconds without growing, so a
burst that pauses for a moment does not cost a fork per task.  Celery
counts the requests its worker reserved; here the work at hand is what the
pool holds (running and prefetched) plus what waits in the queues this
worker consumes, read from the broker once per check, so a backlog nobody
prefetched still grows the pool.

The decision is a pure function of what it is told (:meth:`Autoscaler.want`),
so its rule is unit tested; the supervisor asks it every ``interval`` seconds
and resizes the pool as ``control.pool_grow``/``pool_shrink`` do.
``control.autoscale(max, min)`` changes the bounds of a running worker.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from conveyor.exceptions import ConfigurationError

#: Celery's default; the same environment variable changes it.
KEEPALIVE = float(os.environ.get("AUTOSCALE_KEEPALIVE", "30"))
INTERVAL = 1.0  # seconds between looks at the backlog


def parse_autoscale(value: str) -> tuple[int, int]:
    """``"10,3"`` → (10, 3); ``"10"`` → (10, 1): Celery reads a missing MIN as 0,
    and a pool here always keeps one slot."""
    parts = [p.strip() for p in value.split(",")]
    try:
        numbers = [int(p) for p in parts if p]
    except ValueError:
        numbers = []
    if not 1 <= len(numbers) <= 2 or any(n < 0 for n in numbers):
        raise ConfigurationError(
            f"--autoscale {value!r}: write MAX,MIN (for example 10,3) or MAX")
    high, low = [*numbers, 0][:2]
    high, low = max(high, low), min(high, low)  # Celery accepts either order
    if high < 1:
        raise ConfigurationError(f"--autoscale {value!r}: MAX must be at least 1")
    return high, max(1, low)


@dataclass
class Autoscaler:
    """The bounds and the memory of the last growth; thread safe for control commands."""

    maximum: int
    minimum: int
    keepalive: float = KEEPALIVE
    _last_growth: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def want(self, size: int, busy: int, waiting: int, now: float) -> int:
        """The size the pool should have now (``size`` when nothing should change)."""
        with self._lock:
            wanted = min(busy + waiting, self.maximum)
            if wanted > size or size < self.minimum:
                self._last_growth = now
                return max(wanted, self.minimum)
            if size > self.maximum:
                return self.maximum
            if wanted < size and now - self._last_growth >= self.keepalive:
                return max(wanted, self.minimum)
            return size

    def update(self, maximum: int, minimum: int) -> None:
        """``control.autoscale``: new bounds, applied at the next check."""
        if maximum < 1 or minimum < 0:
            raise ConfigurationError("autoscale: max must be at least 1 and min at least 0")
        with self._lock:
            self.maximum = max(maximum, minimum)
            self.minimum = max(1, min(maximum, minimum))
