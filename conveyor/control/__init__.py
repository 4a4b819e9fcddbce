"""Remote control: ``app.control`` and the worker's control thread.

``base`` is the channel protocol each transport implements (``memory``,
``sqlite``, ``redis``); ``api`` is the client (Celery's ``Control`` and
``Inspect``); ``commands`` and ``worker`` are the worker side.

``Control`` and ``Inspect`` load when first asked for: a worker imports this
package for its control thread before its prefork children fork, and each
child would otherwise hold the client it never uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.control.base import (
    CONTROL_CHANNELS,
    Command,
    ControlChannel,
    Listener,
    channel_for,
)

if TYPE_CHECKING:
    from conveyor.control.api import Control, Inspect

__all__ = ["CONTROL_CHANNELS", "Command", "Control", "ControlChannel", "Inspect", "Listener",
           "channel_for"]


def __getattr__(name: str) -> Any:
    if name in ("Control", "Inspect"):
        from conveyor.control import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
