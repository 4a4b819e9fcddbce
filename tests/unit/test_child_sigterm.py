"""A prefork child's SIGTERM handler stops it once, whatever arrives next."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from conveyor.worker.prefork import stop_on_sigterm


@pytest.fixture
def restored() -> Iterator[None]:
    saved = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, saved)


def test_a_second_sigterm_never_reenters_the_first(restored: None) -> None:
    """Both the supervisor and ``kill -TERM -group`` signal a child; the second
    used to run inside the first handler's Event.set() and wait forever for its
    lock (a worker that never exited on SIGTERM)."""
    stop = threading.Event()
    handler = stop_on_sigterm(stop)
    signal.signal(signal.SIGTERM, handler)
    handler(signal.SIGTERM, None)
    assert stop.is_set()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the rest are ignored
