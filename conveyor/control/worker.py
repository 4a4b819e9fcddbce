"""The worker's control thread: receives commands and answers them.

It runs in the worker's main process beside the pool's supervisor, with its
own connection to the control channel, and never waits on a task slot: a
worker whose slots all run long tasks still answers ``ping`` at once.  A
broken connection is retried with backoff; a failing command is answered
with an error; neither stops the thread or the worker.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from conveyor.control.base import Command, ControlChannel, Listener, channel_for
from conveyor.control.commands import Panel
from conveyor.exceptions import ConveyorError
from conveyor.worker.consumer import Backoff

if TYPE_CHECKING:
    from conveyor.worker.main import Worker

log = logging.getLogger("conveyor.worker")
RECEIVE_WAIT = 0.5  # seconds per receive call; bounds how long stop() waits


class ControlThread:
    """Listens for commands addressed to ``worker`` until stopped."""

    def __init__(self, worker: Worker, channel: ControlChannel) -> None:
        self.worker = worker
        self.channel = channel
        self.panel = Panel(worker)
        self._stop = threading.Event()
        # Opened here, before the worker says it is ready: a command sent after
        # that is seen.
        self._listener: Listener | None = channel.listen()
        self._thread = threading.Thread(target=self._loop, name="conveyor-control", daemon=True)

    @classmethod
    def start_for(cls, worker: Worker) -> ControlThread | None:
        """Start the control thread, or log why remote control is unavailable."""
        conf = worker.app.conf
        try:
            control = cls(worker, channel_for(conf.broker_url, conf.broker_options()))
        except ConveyorError as exc:
            log.warning("remote control is off for this worker: %s", exc)
            return None
        control._thread.start()
        return control

    def stop(self) -> None:
        """Ask the thread to end; it closes its connections itself, within
        :data:`RECEIVE_WAIT` s, so stopping a worker never waits for it."""
        self._stop.set()

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            self._drop_listener()
            self.channel.close()

    def _serve(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                commands = self._listen().receive(RECEIVE_WAIT)
                backoff.reset()
            except Exception as exc:  # a broken connection, or anything else: never stop
                self._drop_listener()
                delay = backoff.next_delay()
                log.warning("control channel unavailable (%s); retrying in %.2fs", exc, delay)
                self._stop.wait(delay)
                continue
            for command in commands:
                if command.for_node(self.worker.hostname):
                    self._answer(command)

    def _listen(self) -> Listener:
        if self._listener is None:
            self._listener = self.channel.listen()
        return self._listener

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.close()
            except Exception as exc:  # a broken connection may fail to close, too
                log.debug("closing the control listener failed: %s", exc)

    def _answer(self, command: Command) -> None:
        reply = self.panel.handle(command.name, command.arguments)
        if not command.reply:
            return
        try:
            self.channel.reply(command.id, self.worker.hostname, reply)
        except Exception as exc:  # the sender times out; this thread carries on
            log.warning("could not reply to control command %s: %s", command.name, exc)
