"""The control-channel contract (conveyor/control/base.py): ``ControlChannelContract``.

The rules are Celery's broadcast semantics (celery/app/control.py): every
listener sees every command published after it started listening, and replies
are collected per command until the timeout or the limit. Not collected on its
own; each transport's module (``tests/contract/test_control_channel_<backend>.py``)
subclasses it and overrides the one hook, the ``url`` fixture.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conveyor.control.base import Command, ControlChannel, channel_for


class ControlChannelContract:
    """The control channel's rules; a transport's test class subclasses this and
    overrides the ``url`` fixture."""

    @pytest.fixture
    def url(self) -> str:
        """The one hook: a broker URL ``channel_for`` opens a channel beside."""
        raise NotImplementedError(f"{type(self).__name__} must override the url fixture")

    @pytest.fixture
    def channel(self, url: str) -> Iterator[ControlChannel]:
        opened = channel_for(url)
        yield opened
        opened.close()

    def test_every_listener_sees_commands_published_after_it_opened(
            self, channel: ControlChannel) -> None:
        channel.publish(Command("ping"))  # before anyone listens: seen by no one
        first, second = channel.listen(), channel.listen()
        sent = Command("stats", {"x": 1}, ["a@host"])
        channel.publish(sent)
        for listener in (first, second):
            [got] = listener.receive(2.0)
            assert (got.id, got.name, got.arguments, got.destination) == (
                sent.id, "stats", {"x": 1}, ["a@host"])
            assert listener.receive(0.1) == []  # each command once
            listener.close()

    def test_replies_come_back_by_command_id_until_the_limit_or_timeout(
            self, channel: ControlChannel) -> None:
        channel.reply("c1", "a@host", {"ok": "pong"})
        channel.reply("c1", "b@host", [1, 2])
        channel.reply("c2", "c@host", "other command")
        began = time.monotonic()
        assert list(channel.replies("c1", timeout=2.0, limit=2)) == [
            ("a@host", {"ok": "pong"}), ("b@host", [1, 2])]
        assert time.monotonic() - began < 1.0  # the limit ends the wait
        began = time.monotonic()
        assert list(channel.replies("nobody", timeout=0.3)) == []
        assert 0.25 <= time.monotonic() - began < 2.0  # the timeout ends it

    def test_a_command_published_while_a_listener_waits_wakes_it(
            self, channel: ControlChannel) -> None:
        listener = channel.listen()
        timer = threading.Timer(0.2, channel.publish, [Command("ping")])
        timer.start()
        began = time.monotonic()
        got = listener.receive(3.0)
        assert [c.name for c in got] == ["ping"] and time.monotonic() - began < 1.5
        timer.join()
        listener.close()
