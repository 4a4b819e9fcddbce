"""Give the C heap's free pages back to the system (glibc's ``malloc_trim``).

CPython keeps small objects in its own arenas, but anything over 512 bytes
(a pipeline's packed commands, a list of a few thousand reports, a pickled
report batch) comes from ``malloc``, whose freed chunks stay resident below
the top of the heap.  A prefork child is a copy of its supervisor: what the
supervisor holds when it forks, the child holds too.  So the supervisor
trims before each fork and after each write of task events (its largest
transient allocations).  Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

__all__ = ["trim"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        # The process's own symbols (libc among them): no ctypes.util, which
        # imports subprocess and runs ldconfig.
        function: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    return function


def trim() -> None:
    """Release the free pages of the C heap (about a millisecond)."""
    function = _malloc_trim()
    if function is not None:
        function(0)
