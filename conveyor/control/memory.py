"""The in-process control channel (``memory://``), for tests in one process.

Per URL, a list of listener inboxes (each a queue of commands) and a queue
of replies per command id.  Nothing crosses a process boundary.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from conveyor.control.base import Command, ControlChannel, Listener

_LOCK = threading.Lock()
_SERVERS: dict[str, _Server] = {}


class _Server:
    def __init__(self) -> None:
        self.inboxes: list[queue.SimpleQueue[Command]] = []
        self.replies: dict[str, queue.SimpleQueue[tuple[str, Any]]] = {}

    def reply_box(self, command_id: str) -> queue.SimpleQueue[tuple[str, Any]]:
        with _LOCK:
            return self.replies.setdefault(command_id, queue.SimpleQueue())


class MemoryListener(Listener):
    def __init__(self, server: _Server) -> None:
        self._server = server
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        with _LOCK:
            server.inboxes.append(self._inbox)

    def receive(self, timeout: float) -> list[Command]:
        try:
            first = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return []
        out = [first]
        while not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    def close(self) -> None:
        with _LOCK:
            if self._inbox in self._server.inboxes:
                self._server.inboxes.remove(self._inbox)


class MemoryChannel(ControlChannel):
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        # ``options`` (broker_transport_options) configure a client; there is none here.
        with _LOCK:
            self._server = _SERVERS.setdefault(url, _Server())

    def publish(self, command: Command) -> None:
        with _LOCK:
            inboxes = list(self._server.inboxes)
        for inbox in inboxes:
            inbox.put(command)

    def listen(self) -> Listener:
        return MemoryListener(self._server)

    def reply(self, command_id: str, node: str, body: Any) -> None:
        self._server.reply_box(command_id).put((node, body))

    def replies(self, command_id: str, timeout: float,
                limit: int | None = None) -> Iterator[tuple[str, Any]]:
        box = self._server.reply_box(command_id)
        deadline = time.monotonic() + timeout
        count = 0
        try:
            while limit is None or count < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    yield box.get(timeout=remaining)
                except queue.Empty:
                    return
                count += 1
        finally:
            with _LOCK:
                self._server.replies.pop(command_id, None)
