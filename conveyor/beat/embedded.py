"""``worker -B``: beat in a daemon thread of the worker, under the same leader lease."""

from __future__ import annotations

import atexit
import os
import threading
from typing import TYPE_CHECKING

from conveyor.beat.loading import load_scheduler
from conveyor.beat.service import Beat

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["run_embedded"]


def run_embedded(app: Conveyor, scheduler: str | None = None) -> Beat:
    """Run beat in a daemon thread of this process (``worker -B``), under the same lease.

    Entries are loaded here, in the caller's thread, so a bad schedule stops
    the worker at start.  The thread stops, and releases the lease, when the
    process exits normally.
    """
    app.finalize()
    beat = Beat(app, load_scheduler(app, scheduler))
    beat.load()
    beat.thread = threading.Thread(target=beat.run, name="conveyor-beat", daemon=True)
    # A prefork pool forks children while beat runs: each fork waits for the
    # pass in progress to end (see Beat._busy).  Registered for good; a
    # stopped beat's lock is always free.
    os.register_at_fork(before=beat._busy.acquire, after_in_parent=beat._busy.release,
                        after_in_child=beat._busy.release)
    beat.thread.start()
    pid = os.getpid()

    def stop_at_exit() -> None:
        if os.getpid() == pid:  # not in a forked pool child, which has no beat thread
            beat.shutdown(timeout=5.0)

    atexit.register(stop_at_exit)
    return beat
