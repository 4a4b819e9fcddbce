"""The control channel: how remote-control commands reach workers and replies come back.

Celery's ``app.control`` broadcasts a command to every worker (or to those
named in ``destination``) and, when a reply is wanted, collects what each
worker answers until the timeout or until as many replies as were expected.
That traffic is not task traffic: a command must reach a worker whose task
slots are all busy, every worker must see every command (a broadcast, not a
queue), and a command sent before a worker started means nothing to it.

So a channel is its own small protocol, carried by each transport's own
mechanism, next to (never inside) the broker's queues:

* :meth:`ControlChannel.publish` puts one :class:`Command` where every
  listening worker sees it (Redis: pub/sub; SQLite: a table the worker polls;
  PostgreSQL: NOTIFY; RabbitMQ: a fanout exchange; memory: in-process).
* :meth:`ControlChannel.listen` opens a :class:`Listener` for one worker: it
  sees commands published after it was opened, each once.
* :meth:`ControlChannel.reply` stores one worker's answer to one command;
  :meth:`ControlChannel.replies` waits for answers to a command id.

``tests/contract/control_channel_contract.py`` (``ControlChannelContract``)
checks these rules; a new transport joins with one small subclass that
supplies its URL (``tests/contract/test_control_channel_<name>.py``).

Destination filtering happens in the worker (a channel delivers every
command to every listener), so a transport needs no per-worker addressing.
Commands and replies travel as JSON text: any transport moves strings.
"""

from __future__ import annotations

import abc
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from conveyor import _redact as redact
from conveyor.schemes import Family, scheme_of

log = logging.getLogger("conveyor.worker")
REPLY_TTL = 60.0  # seconds a stored reply (or a SQLite command row) is kept


@dataclass(frozen=True)
class Command:
    """One broadcast command (Celery's ``method``, ``arguments``, ``destination``)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    destination: list[str] | None = None  # None: every worker
    reply: bool = True
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    sent_at: float = field(default_factory=time.time)

    def for_node(self, node: str) -> bool:
        return self.destination is None or node in self.destination

    def encode(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def decode(cls, text: str | bytes) -> Command:
        data = json.loads(text)
        return cls(name=str(data["name"]), arguments=dict(data.get("arguments") or {}),
                   destination=data.get("destination"), reply=bool(data.get("reply", True)),
                   id=str(data["id"]), sent_at=float(data.get("sent_at", 0.0)))


class Listener(abc.ABC):
    """One worker's subscription: the commands published since it was opened."""

    @abc.abstractmethod
    def receive(self, timeout: float) -> list[Command]:
        """Wait up to ``timeout`` s for commands; return those that arrived (maybe none)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop listening and release the connection."""


class ControlChannel(abc.ABC):
    """Moves commands to every worker and replies back to the sender."""

    @abc.abstractmethod
    def publish(self, command: Command) -> None:
        """Make ``command`` visible to every open listener."""

    @abc.abstractmethod
    def listen(self) -> Listener:
        """Start receiving commands published from now on."""

    @abc.abstractmethod
    def reply(self, command_id: str, node: str, body: Any) -> None:
        """Store ``node``'s answer to ``command_id`` (kept :data:`REPLY_TTL` s)."""

    @abc.abstractmethod
    def replies(self, command_id: str, timeout: float,
                limit: int | None = None) -> Iterator[tuple[str, Any]]:
        """Yield ``(node, body)`` answers as they come, for ``timeout`` s or ``limit`` answers."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def parse_commands(texts: list[str | bytes]) -> list[Command]:
    """Decode what a transport received, skipping (and logging) what is not a command:
    anyone who can write to the broker could publish junk, and it must not stop a worker."""
    out = []
    for text in texts:
        try:
            out.append(Command.decode(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring a malformed control command (%s)", exc)
    return out


def decode_reply(text: str | bytes) -> tuple[str, Any]:
    node, body = json.loads(text)
    return str(node), body


def encode_reply(node: str, body: Any) -> str:
    return json.dumps([node, body], default=str)


_REDIS = "conveyor.control.redis:RedisChannel"
_POSTGRES = "conveyor.control.postgres:PostgresChannel"
_AMQP = "conveyor.control.amqp:AMQPChannel"

#: Broker scheme → control channel class (or factory), called as ``cls(url, options)``
#: with the broker's URL and options.  Third-party transports register under
#: the ``conveyor.control_channels`` entry-point group.
CONTROL_CHANNELS = Family("control channel", "conveyor.control_channels", {
    "memory": "conveyor.control.memory:MemoryChannel",
    "sqlite": "conveyor.control.sqlite:SQLiteChannel",
    "redis": _REDIS, "rediss": _REDIS, "unix": _REDIS, "sentinel": _REDIS,
    "redis+cluster": _REDIS,
    "postgresql": _POSTGRES, "postgres": _POSTGRES,
    "amqp": _AMQP, "amqps": _AMQP, "pyamqp": _AMQP,
}, hint="remote control is not available for this broker")


def channel_for(url: str, options: dict[str, Any] | None = None) -> ControlChannel:
    """The control channel of the broker at ``url`` (the same scheme, server and file)."""
    # Read by the app for task messages; the broker warned about Celery-only ones already.
    options = {k: v for k, v in (options or {}).items() if k != "priority_steps"}
    scheme = scheme_of(url) if "://" in url else ""
    cls = CONTROL_CHANNELS.load(scheme, setting="broker_url", url_for_error=redact.url(url))
    channel: ControlChannel = cls(url, options)
    return channel
