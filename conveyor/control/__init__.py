"""Remote control: ``app.control`` and the worker's control thread.

``base`` is the channel protocol each transport implements (``memory``,
``sqlite``, ``redis``); ``api`` is the client (Celery's ``Control`` and
``Inspect``); ``commands`` and ``worker`` are the worker side.
"""

from __future__ import annotations

from conveyor.control.api import Control, Inspect
from conveyor.control.base import (
    CONTROL_CHANNELS,
    Command,
    ControlChannel,
    Listener,
    channel_for,
)

__all__ = ["CONTROL_CHANNELS", "Command", "Control", "ControlChannel", "Inspect", "Listener",
           "channel_for"]
