"""The signal object: receivers connected per sender, called with keyword arguments.

Behaves as Celery's ``celery.utils.dispatch.Signal`` so receivers written for
Celery connect unchanged:

* ``connect`` works as a plain call, as ``@signal.connect`` and as
  ``@signal.connect(sender=..., weak=..., dispatch_uid=..., retry=...)``;
  it returns the receiver.
* A receiver connected with ``sender=x`` only hears sends whose sender is
  ``x``: strings compare by value (publish signals send the task *name*),
  anything else by identity (task signals send the task *object*).
* Receivers are held weakly by default (``weak=True``), as in Celery: a
  receiver that is a local function dies with its scope.  Pass
  ``weak=False`` to keep it alive.
* ``dispatch_uid`` (or the receiver itself) plus the sender identifies a
  connection: connecting twice is a no-op.
* ``send`` returns ``[(receiver, response), ...]``; a receiver that raises is
  logged and its exception is its response.  Nothing a receiver does can
  stop the worker or lose a message.

Receivers live in a copy-on-write tuple, so ``send`` iterates without a
lock and the worker can skip a signal with one truthiness test
(``if signal.receivers:``) when nothing is connected.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("conveyor.signals")

Receiver = Callable[..., Any]
_Ref = Callable[[], "Receiver | None"]
#: (lookup key, sender key, receiver or weak reference to it)
_Entry = tuple[tuple[Hashable, Hashable], Hashable, "Receiver | _Ref"]

RETRY_INTERVAL = 1.0  # seconds between tries of a ``retry=True`` receiver, as Celery's


def sender_key(sender: Any) -> Hashable:
    """How senders compare: strings by value, everything else by identity."""
    if isinstance(sender, (str, bytes)):
        return sender
    func = getattr(sender, "__func__", None)  # a bound method: its function
    return id(func if func is not None else sender)


_ANY = sender_key(None)


def _accepts_kwargs(fn: Receiver) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True  # a builtin or C callable: cannot tell, let it try
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class Signal:
    """A named signal; ``providing_args`` documents what ``send`` passes."""

    def __init__(self, name: str, providing_args: set[str] | frozenset[str] | None = None
                 ) -> None:
        self.name = name
        self.providing_args = frozenset(providing_args or ())
        #: The connections, as in Celery a plain attribute: ``if signal.receivers:``
        #: is the cheapest "does anyone listen?" (the worker asks per task).
        self.receivers: tuple[_Entry, ...] = ()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Signal {self.name} ({len(self.receivers)} receivers)>"

    # -- connecting ------------------------------------------------------------
    def connect(self, *args: Any, **kwargs: Any) -> Any:
        """``connect(fn, sender=None, weak=True, dispatch_uid=None, retry=False)``.

        Also a decorator, bare (``@sig.connect``) or with options
        (``@sig.connect(sender=task)``).  Returns the receiver.
        """
        if args and callable(args[0]):
            return self._connect(args[0], *args[1:], **kwargs)

        def decorate(fn: Receiver) -> Receiver:
            return self._connect(fn, *args, **kwargs)

        return decorate

    def _connect(self, receiver: Receiver, sender: Any = None, weak: bool = True,
                 dispatch_uid: Hashable | None = None, retry: bool = False) -> Receiver:
        if not callable(receiver):
            raise TypeError(f"{self.name}: a receiver must be callable, got {receiver!r}")
        if not _accepts_kwargs(receiver):
            raise ValueError(f"{self.name}: receiver {receiver!r} must accept keyword "
                             "arguments (add **kwargs)")
        called: Receiver = receiver
        if retry:  # Celery keeps a retried receiver strongly, under a fixed uid
            dispatch_uid = dispatch_uid or sender_key(receiver)
            called, weak = _retrying(receiver), False
        key = (dispatch_uid or sender_key(receiver), sender_key(sender))
        held: Receiver | _Ref = called
        if weak:
            held = self._weak(receiver)
        with self._lock:
            if all(entry[0] != key for entry in self.receivers):
                self.receivers = (*self._live(), (key, key[1], held))
        return receiver

    def _weak(self, receiver: Receiver) -> _Ref:
        ref: _Ref = (weakref.WeakMethod(receiver) if inspect.ismethod(receiver)
                     else weakref.ref(receiver))
        weakref.finalize(getattr(receiver, "__self__", receiver), self._prune)
        return ref

    def disconnect(self, receiver: Receiver | None = None, sender: Any = None,
                   dispatch_uid: Hashable | None = None) -> bool:
        """Remove one connection; True if there was one."""
        key = (dispatch_uid or sender_key(receiver), sender_key(sender))
        with self._lock:
            kept = tuple(e for e in self._live() if e[0] != key)
            removed = len(kept) != len(self.receivers)
            self.receivers = kept
        return removed

    def _prune(self) -> None:
        with self._lock:
            self.receivers = self._live()

    def _live(self) -> tuple[_Entry, ...]:
        return tuple(e for e in self.receivers if _resolve(e[2]) is not None)

    # -- sending ---------------------------------------------------------------
    def live_receivers(self) -> list[Receiver]:
        """The live receivers, whatever their sender."""
        return [r for r in (_resolve(e[2]) for e in self.receivers) if r is not None]

    def has_listeners(self, sender: Any = None) -> bool:
        return bool(self._for(sender))

    def _for(self, sender: Any) -> list[Receiver]:
        key = sender_key(sender)
        found = []
        for _, wanted, held in self.receivers:
            if wanted in (_ANY, key):
                receiver = _resolve(held)
                if receiver is not None:
                    found.append(receiver)
        return found

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call the receivers for ``sender``; a receiver's exception is logged and returned."""
        if not self.receivers:
            return []
        responses: list[tuple[Receiver, Any]] = []
        for receiver in self._for(sender):
            try:
                responses.append((receiver, receiver(signal=self, sender=sender, **named)))
            except Exception as exc:
                log.exception("signal %s: receiver %r raised %r", self.name, receiver, exc)
                responses.append((receiver, exc))
        return responses

    send_robust = send  # Django's name; Celery's send is already robust


def _resolve(held: Receiver | _Ref) -> Receiver | None:
    if isinstance(held, (weakref.ref, weakref.WeakMethod)):
        return held()
    return held


def _retrying(receiver: Receiver) -> Receiver:
    """Celery's ``retry=True``: call again, every second, until it does not raise."""
    def call(**named: Any) -> Any:
        while True:
            try:
                return receiver(**named)
            except Exception as exc:
                log.error("signal receiver %r raised %r; retrying in %gs", receiver, exc,
                          RETRY_INTERVAL)
                time.sleep(RETRY_INTERVAL)

    return call


__all__ = ["Receiver", "Signal", "sender_key"]
