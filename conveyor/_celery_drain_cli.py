"""``conveyor drain-celery``: the switch-over command (see :mod:`conveyor._celery_drain`)."""

from __future__ import annotations

import time
from typing import Any

import click


@click.command("drain-celery")
@click.argument("celery_broker_url")
@click.option("-Q", "--queues", default="celery", show_default=True,
              help="Celery queues to take over, comma separated")
@click.option("--include-unacked", is_flag=True,
              help="also take tasks a Celery worker reserved and never acknowledged "
                   "(only once every Celery worker is stopped)")
@click.option("--prefix", default="", help="Celery's global_keyprefix transport option, if set")
@click.option("--follow", type=float, default=None, metavar="SECONDS",
              help="keep draining every SECONDS until interrupted (while Celery producers "
                   "are still being switched over)")
@click.pass_obj
def drain_celery_command(obj: Any, celery_broker_url: str, queues: str, include_unacked: bool,
                         prefix: str, follow: float | None) -> None:
    """Queue here every task still waiting in Celery's Redis broker, under its Celery id."""
    from conveyor._celery_drain import CeleryRedisDrain

    names = [q.strip() for q in queues.split(",") if q.strip()]
    drain = CeleryRedisDrain(obj.app, celery_broker_url, names, include_unacked, prefix)
    while True:
        report = drain.run_once()
        click.echo(f"moved {report.moved} task(s) from Celery's queues {', '.join(names)}")
        for name, reason in report.skipped:
            click.echo(f"  kept aside from {name!r}: {reason}")
        if follow is None:
            return
        time.sleep(follow)
