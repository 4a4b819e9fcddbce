"""The ledger line every fault task writes: ``event task_id attempt pid``.

One ``write`` with ``O_APPEND`` per line, so lines from many processes never
interleave; ``attempt`` is the broker's delivery count, so a redelivery shows
as a higher number.  The file is named by ``$LEDGER``.
"""

from __future__ import annotations

import os

from conveyor._context import current_request


def record(event: str, as_id: str | None = None) -> None:
    """Append one ledger line for the running task (``as_id`` replaces its id)."""
    request = current_request()
    attempt = int(request.delivery_info.get("deliveries", 1))
    line = f"{event} {as_id or request.id} {attempt} {os.getpid()}\n"
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
