"""The request a task is running for, visible as ``self.request``.

Kept in a ``ContextVar`` so it is right in threads and in asyncio tasks alike,
with no thread-local proxy object.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from conveyor._message import Message
    from conveyor.brokers.base import Delivery


_R = TypeVar("_R", bound="Request")


@dataclass
class Request:
    """What a running task knows about its call (Celery's ``self.request``)."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    eta: float | None = None
    expires: float | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    called_directly: bool = True
    is_eager: bool = False  # run in the caller's process by Task.apply / eager mode
    message: Message | None = None
    delivery: Delivery | None = None
    children: list[str] = field(default_factory=list)

    @classmethod
    def from_message(cls: type[_R], message: Message, delivery: Delivery | None,
                     hostname: str) -> _R:
        """The request for a message a worker is about to run."""
        return cls(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            root_id=message.root_id or message.id,
            parent_id=message.parent_id,
            group=message.group_id,
            group_index=message.group_index,
            eta=message.eta,
            expires=message.expires,
            hostname=hostname,
            delivery_info={
                "queue": message.queue,
                "priority": message.priority,
                "deliveries": delivery.deliveries if delivery else 1,
                "redelivered": bool(delivery and delivery.deliveries > 1),
            },
            headers=message.headers,
            called_directly=False,
            message=message,
            delivery=delivery,
        )


_DIRECT = Request()
_current: ContextVar[Request | None] = ContextVar("conveyor_request", default=None)


def current_request() -> Request:
    """The running task's request, or an empty one when called directly."""
    return _current.get() or _DIRECT


#: The running task's request, or None outside a worker.  The context
#: variable's own ``get`` (no Python frame around it): every send asks.
running_request: Callable[[], Request | None] = _current.get


def push_request(request: Request) -> Token[Request | None]:
    return _current.set(request)


def pop_request(token: Token[Request | None]) -> None:
    _current.reset(token)
