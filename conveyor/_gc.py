"""Pausing Python's cyclic garbage collector while a bulk send builds its messages.

Sending a group of 20,000 calls creates some ten objects per call that all
live until the batch is written (signatures, their frozen copies, encoded
envelopes, result handles).  Every 700 of them start a collection, and as
they pile up they trigger full collections that walk every object in the
process: about a fifth of the client CPU of ``group(...).apply_async()``
(docs/performance.md, round two, second pass).  Nothing in that work makes
reference cycles for the collector to find (what it allocates is freed by
reference counting when the send returns), so collecting can wait until
the batch is sent: :func:`paused` turns the collector off for the ``with``
block and back on afterwards.

The collector is one switch per process, so the pause is counted: nested
or concurrent pauses (threads, greenlets) turn it back on when the last one
ends, and only if it was on when the first began; a pause never turns on a
collector the application had turned off.  A process forked during a pause
(another thread called ``fork()``) starts with the collector on again, as
it was before the pause.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused"]

_lock = threading.Lock()
_depth = 0  # pauses under way
_resume = False  # whether the last pause to end turns the collector back on


@contextmanager
def paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off (see the module docstring)."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()


def _after_fork_in_child() -> None:
    """The pausing threads did not survive the fork: undo their pauses."""
    global _lock, _depth, _resume
    _lock = threading.Lock()  # another thread may have held it at the fork
    if _depth and _resume:
        gc.enable()
    _depth, _resume = 0, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
