"""Celery's small tools: ``result``, ``events --dump`` and ``shell``.

Each keeps Celery's options (``celery/bin/result.py``, ``events.py``,
``shell.py``) where they mean something here.  ``events`` reads the event
store the monitor reads (Conveyor has no event broadcast to listen to), so
``--dump`` polls it and prints each task state change once, as it appears.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timezone
from typing import Any

import click

POLL = 0.25  # seconds between reads of the event store


@click.command("result")
@click.argument("task_id")
@click.option("-t", "--task", default=None, help="the task's name (its result settings)")
@click.option("--traceback", is_flag=True, help="print the traceback instead of the value")
@click.option("--timeout", type=float, default=None,
              help="seconds to wait for the result (default: wait as Celery does)")
@click.pass_obj
def result_command(obj: Any, task_id: str, task: str | None, traceback: bool,
                   timeout: float | None) -> None:
    """Print a task's return value (waiting for it), or with --traceback its traceback."""
    app = obj.app
    found = app.tasks[task].AsyncResult(task_id) if task else app.AsyncResult(task_id)
    if traceback:
        click.echo(found.traceback)
        return
    try:
        value = found.get(timeout=timeout)
    except Exception as exc:  # the task's own exception, re-raised by get() as Celery's
        raise click.ClickException(f"{task_id}: {type(exc).__name__}: {exc}") from exc
    click.echo(value)


@click.command("events")
@click.option("-d", "--dump", is_flag=True, help="print task events as they happen")
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line")
@click.option("--max", "max_events", type=int, default=None, help="stop after this many")
@click.option("--timeout", type=float, default=None, help="stop after this many seconds")
@click.option("-l", "--loglevel", default="WARNING")
@click.pass_obj
def events_command(obj: Any, dump: bool, as_json: bool, max_events: int | None,
                   timeout: float | None, loglevel: str) -> None:
    """Task events from the event store (Ctrl-C stops).  The live view is ``conveyor monitor``."""
    if not dump:
        raise click.UsageError("conveyor events prints events with --dump; Celery's curses "
                               "view and snapshot cameras are replaced by `conveyor monitor`")
    from conveyor._events import store_for

    store = store_for(obj.app)
    deadline = None if timeout is None else time.monotonic() + timeout
    printed = 0
    since = time.time()  # before the line below: a caller may act once it reads it
    click.echo("-> events: capturing task events (Ctrl-C stops)", err=as_json)
    with contextlib.suppress(KeyboardInterrupt):
        for line in _follow(store, since, deadline, as_json):
            click.echo(line)
            printed += 1
            if max_events is not None and printed >= max_events:
                return


def _follow(store: Any, since: float, deadline: float | None, as_json: bool) -> Any:
    """Each task event after ``since`` once, in time order per task.

    The index says which tasks changed; their timelines hold every event
    (sent, started, and the outcome), which a batch flush would otherwise
    fold into the last state."""
    from conveyor._events import TaskQuery

    seen: set[tuple[str, float, str]] = set()
    while deadline is None or time.monotonic() < deadline:
        entries = store.tasks(TaskQuery(since=since - 5.0, limit=1000))  # flushes land late
        for entry in sorted(entries, key=lambda e: e.updated_at):
            for event in store.timeline(entry.task_id):
                key = (event.task_id, event.ts, event.kind)
                if key not in seen and event.ts >= since:
                    seen.add(key)
                    yield _dump_line(entry.name, event, as_json)
        time.sleep(POLL)


def _dump_line(name: str, event: Any, as_json: bool) -> str:
    kind = f"task-{event.kind.lower()}"
    if as_json:
        return json.dumps({"type": kind, "name": name, **event.to_dict()})
    stamp = datetime.fromtimestamp(event.ts, timezone.utc).isoformat(timespec="milliseconds")
    detail = f" {event.detail}" if event.detail else ""
    return f"{event.worker or '-'} [{stamp}] {kind}: {name}[{event.task_id}]{detail}"


@click.command("shell")
@click.option("-I", "--ipython", is_flag=True, help="use IPython (the default when installed)")
@click.option("-B", "--bpython", is_flag=True, help="use bpython")
@click.option("--python", "plain", is_flag=True, help="use the plain Python shell")
@click.option("-T", "--without-tasks", is_flag=True, help="do not put the tasks in the namespace")
@click.pass_obj
def shell_command(obj: Any, ipython: bool, bpython: bool, plain: bool,
                  without_tasks: bool) -> None:
    """A Python shell with the app, the canvas helpers and every task by its short name."""
    namespace = _namespace(obj.app, without_tasks)
    if bpython:
        _bpython(namespace)
    elif plain or not _ipython(namespace, required=ipython):
        import code

        code.interact(banner=_banner(namespace), local=namespace)


def _namespace(app: Any, without_tasks: bool) -> dict[str, Any]:
    from conveyor import chain, chord, group, signature

    namespace: dict[str, Any] = {"app": app, "celery": app, "conveyor": app, "chain": chain,
                                 "chord": chord, "group": group, "signature": signature}
    if not without_tasks:
        app.finalize()
        for name, task in sorted(app.tasks.items()):
            if not name.startswith("conveyor."):
                namespace[name.rpartition(".")[2]] = task
    return namespace


def _banner(namespace: dict[str, Any]) -> str:
    return "conveyor shell: " + ", ".join(sorted(namespace))


def _ipython(namespace: dict[str, Any], required: bool) -> bool:
    try:
        import IPython
    except ImportError as exc:
        if required:
            raise click.UsageError("-I/--ipython: IPython is not installed") from exc
        return False
    IPython.start_ipython(argv=[], user_ns=namespace, display_banner=False)
    return True


def _bpython(namespace: dict[str, Any]) -> None:
    try:
        import bpython
    except ImportError as exc:
        raise click.UsageError("-B/--bpython: bpython is not installed") from exc
    bpython.embed(namespace)
