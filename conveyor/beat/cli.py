"""``conveyor -A proj beat``: the periodic-task sender as its own process.

Kept apart from ``conveyor/_cli.py`` so the command and the service it starts
live together; ``conveyor/_cli.py`` only registers it.
"""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from conveyor import _flag_notes as flag_notes
from conveyor._daemon import daemon_options, daemonize

if TYPE_CHECKING:
    from conveyor.beat.service import Beat

log = logging.getLogger("conveyor.beat")


@click.command("beat")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("-S", "--scheduler", default=None,
              help="dotted path of a conveyor.scheduler.Scheduler subclass, or 'django' "
                   "(default: beat_scheduler, else the beat_schedule setting)")
@click.option("--max-interval", type=float, default=None,
              help="longest sleep between passes, in seconds (beat_max_loop_interval)")
@click.option("-s", "--schedule", "schedule_file", default=None,
              help="accepted for Celery compatibility; run history lives in the broker")
@daemon_options
@click.pass_obj
def beat_command(obj: Any, loglevel: str, scheduler: str | None, max_interval: float | None,
                 **flags: Any) -> None:
    """Send periodic tasks.  Run as many as you like: one leads, the others stand by."""
    from conveyor.beat.loading import load_scheduler
    from conveyor.beat.service import Beat
    from conveyor.log import setup_logging_for

    app = obj.app
    notes = flag_notes.given(flags, flag_notes.BEAT_NOTES)
    flags.pop("schedule_file")
    logfile = daemonize(flags, f"beat@{socket.gethostname()}")
    setup_logging_for(app, loglevel, logfile=logfile)
    flag_notes.log_notes("beat", notes)
    if max_interval is not None:
        app.conf.update({"beat_max_loop_interval": max_interval}, source="--max-interval")
    from conveyor._signing import pickle_warning

    risk = pickle_warning(app.conf)
    if risk:
        log.warning("beat: %s", risk)
    service = Beat(app, load_scheduler(app, scheduler))
    _install_signals(service)
    service.run()


def _install_signals(service: Beat) -> None:
    """First SIGTERM/SIGINT: finish the pass and release the lease.  Second: leave now."""

    def stop(signum: int, frame: FrameType | None) -> None:
        if service.stopping:
            raise SystemExit(1)
        log.info("beat: shutting down (signal %d)", signum)
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
