"""This process's id, kept, instead of a system call each time it is asked.

Per-process state (an app's broker, a Redis client) is rebuilt when the
process id differs from the one it was built in, and the send path asked
``os.getpid()`` three or four times per ``.delay()``: a system call each,
~0.3-0.5 µs on the benchmark VM.  :func:`current` reads a module variable
that ``os.register_at_fork`` sets again in every forked child (``os.fork``,
multiprocessing, billiard), before the child runs any code of its own.

What touches a shared socket still asks the kernel: a Redis pool lends a
connection only after comparing its owner with ``os.getpid()``
(``conveyor._redis``), so a child forked some other way (a C extension
calling ``fork()`` without CPython's fork hooks) at worst keeps using its
parent's broker *object*, whose pool then resets itself in the child.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def current() -> int:
    """``os.getpid()``, without the system call."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)

__all__ = ["current"]
