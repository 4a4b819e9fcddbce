"""``from conveyor.scheduler import Entry, Scheduler``: the scheduler plug-in interface.

The path the docs show for writing a custom scheduler; the interface lives
in ``conveyor/beat/scheduler.py``.
"""

from conveyor.beat.scheduler import Entry, Scheduler

__all__ = ["Entry", "Scheduler"]
