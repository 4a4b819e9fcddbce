"""Soft time limits: raise ``SoftTimeLimitExceeded`` inside a running task.

Two strategies, as small classes: a process's main thread gets a real
``SIGALRM`` timer (it interrupts blocking system calls too); any other thread
gets the exception injected with ``PyThreadState_SetAsyncExc`` (delivered at
the next bytecode, so a call blocked in C sees it only when it returns).
Hard limits are the supervisor's job (:mod:`conveyor.worker.supervisor`).
"""

from __future__ import annotations

import ctypes
import signal
import threading
from types import FrameType

from conveyor.exceptions import SoftTimeLimitExceeded


class SignalTimer:
    """SIGALRM-based limit for the main thread of a process."""

    def __init__(self) -> None:
        signal.signal(signal.SIGALRM, self._fire)

    @staticmethod
    def _fire(signum: int, frame: FrameType | None) -> None:
        raise SoftTimeLimitExceeded("soft time limit exceeded")

    def arm(self, seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


class ThreadTimer:
    """Async-exception limit for worker threads."""

    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    def arm(self, seconds: float) -> None:
        target = threading.get_ident()
        self._timer = threading.Timer(seconds, _raise_in, (target, SoftTimeLimitExceeded))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Queue ``exc_type`` for the thread's next bytecode (``None``: drop what is queued)."""
    exc = ctypes.c_void_p(None) if exc_type is None else ctypes.py_object(exc_type)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)
