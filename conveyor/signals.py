"""Hooks for integrations: around each task, and around sending inside a transaction.

Two small mechanisms, both generic (the Django integration is one user):

* :class:`Signal` — a list of receivers called in order.  The worker sends
  :data:`task_prerun` after decoding a message and before anything about it
  is written (its STARTED result included), and :data:`task_postrun` after
  its final result is written, whatever happened.  Integrations use them for
  per-task resource hygiene, e.g. database connections.  A receiver that
  raises is logged and skipped: a broken integration must not make the
  worker drop or repeat messages.

* :func:`defer_until_commit` — asks the registered *deferrers* whether the
  caller is inside a database transaction; the first that says yes takes the
  send and runs it when that transaction commits (and never, if it rolls
  back).  Without a deferrer, or outside a transaction, sending happens now.

Receivers and deferrers are registered explicitly by the integration (the
Django app does it in ``AppConfig.ready``); nothing here switches on by itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("conveyor.signals")

Receiver = Callable[..., Any]
#: Takes a zero-argument send; returns True if it will run it at commit time.
Deferrer = Callable[[Callable[[], object]], bool]


class Signal:
    """Receivers called with keyword arguments, in the order they connected."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: list[Receiver] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Signal {self.name} ({len(self._receivers)} receivers)>"

    def connect(self, receiver: Receiver) -> Receiver:
        """Add ``receiver`` (once); usable as a decorator."""
        with self._lock:
            if receiver not in self._receivers:
                self._receivers = [*self._receivers, receiver]
        return receiver

    def disconnect(self, receiver: Receiver) -> None:
        with self._lock:
            self._receivers = [r for r in self._receivers if r != receiver]

    @property
    def receivers(self) -> list[Receiver]:
        return list(self._receivers)

    def send(self, sender: Any = None, **kwargs: Any) -> None:
        """Call every receiver; exceptions are logged, never raised."""
        for receiver in self._receivers:  # a copy-on-write list: safe to iterate
            try:
                receiver(sender=sender, signal=self, **kwargs)
            except Exception:
                log.exception("%s receiver %r failed", self.name, receiver)


#: ``sender=app, task_id, task (name), message`` — before any result write.
task_prerun = Signal("task_prerun")
#: ``sender=app, task_id, task (name), message, state`` — after the last result write.
task_postrun = Signal("task_postrun")

_deferrers: list[Deferrer] = []


def add_deferrer(deferrer: Deferrer) -> None:
    """Register a transaction integration (idempotent)."""
    if deferrer not in _deferrers:
        _deferrers.append(deferrer)


def remove_deferrer(deferrer: Deferrer) -> None:
    if deferrer in _deferrers:
        _deferrers.remove(deferrer)


def defer_until_commit(send: Callable[[], object]) -> bool:
    """Hand ``send`` to the caller's open transaction, if there is one.

    Returns True when a deferrer took it (it will run at commit), False when
    the caller should send now.
    """
    return any(deferrer(send) for deferrer in list(_deferrers))


__all__ = [
    "Deferrer",
    "Signal",
    "add_deferrer",
    "defer_until_commit",
    "remove_deferrer",
    "task_postrun",
    "task_prerun",
]
