"""The supervisor's wait: every child's report pipe and exit, in one poll set.

``multiprocessing.connection.wait`` builds a selector on each call and
``Connection.poll`` another; at a few thousand reports a second that was most
of the supervisor's CPU.  Here the poll sets are kept across calls.

Reports are also read in bunches: once a pipe had something, pipes are not
looked at again for ``min_interval`` (reports wait in the pipe's buffer a few
milliseconds), while child exits are still seen at once.  Under load the
supervisor wakes a couple of hundred times a second, not once per task;
idle, it sleeps until something happens.
"""

from __future__ import annotations

import math
import select
import time
from dataclasses import dataclass


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


@dataclass
class _Watched:
    pipe: int
    sentinel: int
    pipe_poll: select.poll  # the pipe alone: "is there more to read?" without a selector


class ChildWatch:
    """Which children have reports to read, and which have exited."""

    def __init__(self, min_interval: float = 0.005) -> None:
        self.min_interval = min_interval
        self._all = select.poll()
        self._exits = select.poll()
        self._children: dict[int, _Watched] = {}
        self._owner: dict[int, tuple[int, bool]] = {}  # fd -> (key, is the exit sentinel)
        self._quiet_until = 0.0

    def add(self, key: int, pipe: int, sentinel: int) -> None:
        pipe_poll = select.poll()
        pipe_poll.register(pipe, select.POLLIN)
        self._children[key] = _Watched(pipe, sentinel, pipe_poll)
        self._all.register(pipe, select.POLLIN)
        self._all.register(sentinel, select.POLLIN)
        self._exits.register(sentinel, select.POLLIN)
        self._owner[pipe] = (key, False)
        self._owner[sentinel] = (key, True)

    def remove(self, key: int) -> None:
        watched = self._children.pop(key, None)
        if watched is None:
            return
        for fd in (watched.pipe, watched.sentinel):
            self._all.unregister(fd)
            self._owner.pop(fd, None)
        self._exits.unregister(watched.sentinel)

    def readable(self, key: int) -> bool:
        """Does this child's pipe hold more to read (or is it closed)?"""
        watched = self._children.get(key)
        return watched is not None and bool(watched.pipe_poll.poll(0))

    def wait(self, timeout: float) -> tuple[list[int], list[int]]:
        """Block up to ``timeout`` s; return (keys with reports, keys that exited)."""
        quiet = self._quiet_until - time.monotonic()
        if quiet > 0:
            events = self._exits.poll(_ms(min(timeout, quiet)))
            if time.monotonic() >= self._quiet_until:
                events += self._all.poll(0)
        else:
            events = self._all.poll(_ms(timeout))
        reports: list[int] = []
        exits: list[int] = []
        for fd, _ in events:
            key, is_exit = self._owner.get(fd, (-1, False))
            target = exits if is_exit else reports
            if key >= 0 and key not in target:
                target.append(key)
        if reports:
            self._quiet_until = time.monotonic() + self.min_interval
        return reports, exits
