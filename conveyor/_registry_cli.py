"""``conveyor tasks``: every task the app registers, with the options it runs with.

Celery users read this list in a worker's start-up banner and from
``celery inspect registered``; here it is a command of its own that needs no
running worker.  It finalizes the app first, so tasks found by
``autodiscover_tasks()`` (Django apps' ``tasks.py``) are listed as a worker
would see them, not only the ones imported so far.
"""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.app import Conveyor
from conveyor.task import Task

# Each option a task can set, and the setting it defaults to: the text view
# shows an option only where the task's value differs from that setting.
_SHOWN = {
    "max_retries": "task_default_max_retries",
    "default_retry_delay": "task_default_retry_delay",
    "rate_limit": "task_default_rate_limit",
    "time_limit": "task_time_limit",
    "soft_time_limit": "task_soft_time_limit",
    "acks_late": "task_acks_late",
    "ignore_result": "task_ignore_result",
    "priority": "task_default_priority",
}


def describe(app: Conveyor, task: Task) -> dict[str, Any]:
    """A task's name, the queue it is routed to, and its options as attributes read them."""
    queue = app._route(task.name, task, (), {}, {})["queue"]
    row: dict[str, Any] = {"name": task.name, "queue": queue}
    for option in _SHOWN:
        row[option] = getattr(task, option, None)
    row["async"] = task.is_async
    return row


def registered(app: Conveyor) -> list[dict[str, Any]]:
    """Every user task (Conveyor's own ``conveyor.*`` helpers left out), by name."""
    app.finalize()
    return [describe(app, task) for name, task in sorted(app.tasks.items())
            if not name.startswith("conveyor.")]


@click.command("tasks")
@click.option("--json", "as_json", is_flag=True, help="one JSON document, for scripts")
@click.pass_obj
def tasks_command(obj: Any, as_json: bool) -> None:
    """List registered tasks (after autodiscovery) with their queues and options."""
    rows = registered(obj.app)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    conf = obj.app.conf
    for row in rows:
        extras = ", ".join(f"{k}={row[k]}" for k, setting in _SHOWN.items()
                           if row[k] is not None and row[k] != getattr(conf, setting, None))
        kind = " (async)" if row["async"] else ""
        click.echo(f"{row['name']}{kind}  queue={row['queue']}" + (f"  {extras}" if extras else ""))
    click.echo(f"{len(rows)} task{'s' if len(rows) != 1 else ''}")
