"""When the next attempt of a failing task should run."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``factor * 2**retries`` capped at ``maximum``.

    With ``jitter`` the delay is drawn uniformly from ``[0, delay]`` ("full
    jitter"), which spreads a herd of retries the most.
    """

    factor: float
    maximum: float = 600.0
    jitter: bool = True

    def countdown(self, retries: int, rng: random.Random | None = None) -> float:
        delay = min(self.maximum, self.factor * (2 ** max(retries, 0)))
        if self.jitter:
            delay = (rng or random).uniform(0, delay)
        return delay


def backoff_for(retry_backoff: bool | float, maximum: float, jitter: bool) -> Backoff | None:
    """Celery's ``retry_backoff`` option: True means a factor of 1 second."""
    if retry_backoff is False or retry_backoff is None:
        return None
    factor = 1.0 if retry_backoff is True else float(retry_backoff)
    return Backoff(factor=factor, maximum=maximum, jitter=jitter)
