"""``conveyor inspect <command>`` and ``conveyor control <command>``: Celery's remote-control CLI.

Options are Celery's (``-d/--destination`` comma separated, ``-t/--timeout``
seconds, ``-j/--json``).  When no worker answers within the timeout the
command exits with status 69 (``EX_UNAVAILABLE``), as Celery's does, so a
container health check ``conveyor -A proj inspect ping`` fails while its
worker is down or stuck.  Output is a table unless ``--json``, which prints
Celery's ``{node: reply}`` mapping.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

EX_UNAVAILABLE = 69
F = Callable[..., Any]


def remote_options(fn: F) -> F:
    """Celery's remote-control options, in Celery's spelling."""
    fn = click.option("-j", "--json", "as_json", is_flag=True,
                      help="print Celery's {node: reply} JSON")(fn)
    fn = click.option("-d", "--destination", default=None, metavar="NODES",
                      help="comma separated worker names (default: every worker)")(fn)
    return click.option("-t", "--timeout", type=float, default=1.0, show_default=True,
                        help="seconds to wait for replies")(fn)


def _nodes(destination: str | None) -> list[str] | None:
    if not destination:
        return None
    return [n.strip() for n in destination.split(",") if n.strip()]


def ask(app: Any, command: str, timeout: float, destination: str | None,
        **arguments: Any) -> dict[str, Any]:
    """Broadcast ``command`` and gather ``{node: reply}``; exit 69 when nobody answers."""
    replies = app.control.broadcast(command, arguments=arguments, reply=True, timeout=timeout,
                                    destination=_nodes(destination)) or []
    by_node = {node: body for reply in replies for node, body in reply.items()}
    if not by_node:
        click.echo("Error: No nodes replied within time constraint", err=True)
        sys.exit(EX_UNAVAILABLE)
    return by_node


def table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [tuple("-" if c is None else str(c) for c in row) for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def emit(replies: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    if as_json:
        click.echo(json.dumps(replies, indent=2, default=str))
        return
    render(replies)
    count = len(replies)
    click.echo(f"\n{count} node{'s' if count != 1 else ''} online.")


def _status(reply: Any) -> str:
    if isinstance(reply, dict) and len(reply) == 1 and next(iter(reply)) in ("ok", "error"):
        kind, text = next(iter(reply.items()))
        return f"{'OK' if kind == 'ok' else 'ERROR'}: {text}"
    return json.dumps(reply, default=str)


def _listed(reply: Any) -> list[Any]:
    """A worker's list reply; an error reply (a dict) shows as nothing in a table."""
    return reply if isinstance(reply, list) else []


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


# -- inspect subcommands (the group itself lives in conveyor/monitor/cli.py) ----------
@click.command("ping")
@remote_options
@click.pass_obj
def inspect_ping(obj: Any, timeout: float, destination: str | None, as_json: bool) -> None:
    """Ask every worker to answer (exit 69 when none does): the health check."""
    replies = ask(obj.app, "ping", timeout, destination)
    emit(replies, as_json, lambda r: table(("worker", "reply"),
                                           [(n, _status(v)) for n, v in sorted(r.items())]))


@click.command("reserved")
@remote_options
@click.pass_obj
def inspect_reserved(obj: Any, timeout: float, destination: str | None, as_json: bool) -> None:
    """Messages workers hold (prefetched) but have not started."""
    replies = ask(obj.app, "reserved", timeout, destination)
    emit(replies, as_json, lambda r: table(
        ("worker", "task id", "name", "queue", "args"),
        [(n, t["id"], t.get("name"), t.get("delivery_info", {}).get("routing_key"),
          _short(t.get("args"))) for n, tasks in sorted(r.items()) for t in _listed(tasks)]))


@click.command("query_task")
@click.argument("ids", nargs=-1, required=True)
@remote_options
@click.pass_obj
def inspect_query_task(obj: Any, ids: tuple[str, ...], timeout: float, destination: str | None,
                       as_json: bool) -> None:
    """Which worker holds each task id, and whether it runs (active) or waits (reserved)."""
    replies = ask(obj.app, "query_task", timeout, destination, ids=list(ids))
    emit(replies, as_json, lambda r: table(
        ("worker", "task id", "state", "name"),
        [(n, i, held[0], held[1].get("name")) for n, found in sorted(r.items())
         for i, held in sorted((found or {}).items())]))


@click.command("registered")
@remote_options
@click.pass_obj
def inspect_registered(obj: Any, timeout: float, destination: str | None,
                       as_json: bool) -> None:
    """Task names each worker knows (``conveyor tasks`` lists them without a worker)."""
    replies = ask(obj.app, "registered", timeout, destination)
    emit(replies, as_json, lambda r: table(
        ("worker", "task"),
        [(n, name) for n, names in sorted(r.items()) for name in _listed(names)]))


@click.command("revoked")
@remote_options
@click.pass_obj
def inspect_revoked(obj: Any, timeout: float, destination: str | None, as_json: bool) -> None:
    """Task ids revoked by broadcast since each worker started."""
    replies = ask(obj.app, "revoked", timeout, destination)
    emit(replies, as_json, lambda r: table(
        ("worker", "task id"), [(n, i) for n, ids in sorted(r.items()) for i in _listed(ids)]))


@click.command("active_queues")
@remote_options
@click.pass_obj
def inspect_active_queues(obj: Any, timeout: float, destination: str | None,
                          as_json: bool) -> None:
    """The queues each worker reserves from now, with the maximum priority and the
    arguments their broker declares them with (none where queues are not declared)."""
    replies = ask(obj.app, "active_queues", timeout, destination)
    emit(replies, as_json, lambda r: table(
        ("worker", "queue", "max priority", "arguments"),
        [(n, q["name"], q.get("max_priority"),
          None if q.get("queue_arguments") is None else _short(q["queue_arguments"], 70))
         for n, qs in sorted(r.items()) for q in _listed(qs)]))


@click.command("conf")
@click.option("--with-defaults", is_flag=True, help="every setting, not only those set")
@remote_options
@click.pass_obj
def inspect_conf(obj: Any, with_defaults: bool, timeout: float, destination: str | None,
                 as_json: bool) -> None:
    """The settings each worker runs with (secrets masked)."""
    replies = ask(obj.app, "conf", timeout, destination, with_defaults=with_defaults)
    emit(replies, as_json, lambda r: table(
        ("worker", "setting", "value"),
        [(n, k, _short(v, 60)) for n, conf in sorted(r.items()) for k, v in sorted(conf.items())]))


def stats_rows(replies: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(n, s.get("pid"), s.get("pool", {}).get("implementation"),
             s.get("pool", {}).get("max-concurrency"), sum((s.get("total") or {}).values()),
             f"{s.get('uptime', 0)}s") for n, s in sorted(replies.items())]


def active_rows(replies: dict[str, Any], progress: dict[str, Any]) -> list[tuple[Any, ...]]:
    now = time.time()
    return [(n, t["id"], t.get("name"), t.get("delivery_info", {}).get("routing_key"),
             f"{now - float(t.get('time_start') or now):.1f}s", _short(t.get("args"), 30),
             "-" if progress.get(t["id"]) is None else f"{progress[t['id']]:.0f}%")
            for n, tasks in sorted(replies.items()) for t in _listed(tasks)]


WORKER_INSPECT = (inspect_ping, inspect_reserved, inspect_query_task, inspect_registered,
                  inspect_revoked, inspect_active_queues, inspect_conf)


# -- control ---------------------------------------------------------------------------
def _float_or_none(value: str) -> float | None:
    return None if value.lower() in ("none", "-") else float(value)


# Celery's positional arguments per command (celery/worker/control.py signatures).
CONTROL_ARGS: dict[str, tuple[tuple[str, Callable[[str], Any]], ...]] = {
    "rate_limit": (("task_name", str), ("rate_limit", str)),
    "time_limit": (("task_name", str), ("soft", _float_or_none), ("hard", _float_or_none)),
    "add_consumer": (("queue", str),),
    "cancel_consumer": (("queue", str),),
    "pool_grow": (("n", int),),
    "pool_shrink": (("n", int),),
    "shutdown": (),
    "ping": (),
    "enable_events": (),
    "disable_events": (),
}


def control_arguments(command: str, args: tuple[str, ...]) -> dict[str, Any]:
    """Celery's ``control <command> [args]`` positional arguments, typed."""
    spec = CONTROL_ARGS.get(command)
    if spec is None:
        known = ", ".join(sorted([*CONTROL_ARGS, "revoke", "terminate"]))
        raise click.UsageError(f"unknown control command {command!r}; known: {known}")
    if len(args) > len(spec):
        names = " ".join(name for name, _ in spec) or "no arguments"
        raise click.UsageError(f"control {command} takes: {names}")
    try:
        return {name: kind(arg) for (name, kind), arg in zip(spec, args, strict=False)}
    except ValueError as exc:
        raise click.UsageError(f"control {command}: {exc}") from None


@click.command("control")
@click.argument("command")
@click.argument("args", nargs=-1)
@remote_options
@click.pass_obj
def control_command(obj: Any, command: str, args: tuple[str, ...], timeout: float,
                    destination: str | None, as_json: bool) -> None:
    """Send COMMAND to the workers: rate_limit, time_limit, add_consumer, cancel_consumer,
    pool_grow, pool_shrink, shutdown, revoke ID..., terminate SIGNAL ID..."""
    app = obj.app
    if command in ("revoke", "terminate"):
        _revoke(app, command, args, destination)
        return
    arguments = control_arguments(command, args)
    replies = ask(app, command, timeout, destination, **arguments)
    emit(replies, as_json, lambda r: table(
        ("worker", "reply"), [(n, _status(v)) for n, v in sorted(r.items())]))


def _revoke(app: Any, command: str, args: tuple[str, ...], destination: str | None) -> None:
    """Revocations live in the broker: no worker needs to answer for them to hold."""
    if command == "terminate":
        if len(args) < 2:
            raise click.UsageError("control terminate takes: SIGNAL TASK_ID...")
        signal, ids = args[0], list(args[1:])
        app.control.revoke(ids, terminate=True, signal=signal, destination=_nodes(destination))
    else:
        if not args:
            raise click.UsageError("control revoke takes: TASK_ID...")
        ids = list(args)
        app.control.revoke(ids, destination=_nodes(destination))
    click.echo(f"revoked {', '.join(ids)}")
