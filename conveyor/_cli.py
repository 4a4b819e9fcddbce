"""The ``conveyor`` command, shaped like Celery's: ``conveyor -A proj worker -l INFO``."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from conveyor._daemon import daemon_options
from conveyor._greenlets import EVENTLET_REFUSED, GREENLET_POOLS, reexec_if_needed
from conveyor._worker_start import (
    DAEMON_FLAGS,
    UsageProblem,
    exec_worker,
    load_app,
    start_worker,
)
from conveyor.app import Conveyor
from conveyor.exceptions import ConfigurationError

log = logging.getLogger("conveyor.cli")
# Set by run(), the command's entry point: only a process that is the command
# may exec itself (not CliRunner's, nor Django's manage.py conveyor).
_EXEC_FOR_WORKER = False
class Context:
    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self._app: Conveyor | None = None

    @property
    def app(self) -> Conveyor:
        if self._app is None:
            with usage_errors():
                self._app = load_app(self.spec)
        return self._app


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """The start-up's usage mistakes (``conveyor._worker_start``) as click's."""
    try:
        yield
    except UsageProblem as exc:
        raise click.UsageError(str(exc)) from exc


pass_ctx = click.make_pass_decorator(Context)


# Commands kept in modules of their own, imported only when named (or listed
# by --help): a worker, and every prefork child forked from it, then carries
# none of the others' imports (~2 MiB of resident memory per process).
_LAZY_COMMANDS = {
    "tasks": "conveyor._registry_cli:tasks_command",
    "migrate": "conveyor.migrate.cli:migrate_command",
    "drain-celery": "conveyor._celery_drain_cli:drain_celery_command",
    "deploy": "conveyor._ops_cli:deploy_command",
    "report": "conveyor._ops_cli:report_command",
    "healthcheck": "conveyor._ops_cli:healthcheck_command",
    "result": "conveyor._tools_cli:result_command",
    "events": "conveyor._tools_cli:events_command",
    "shell": "conveyor._tools_cli:shell_command",
    "multi": "conveyor._multi_cli:multi_command",
    "db": "conveyor._db_cli:db_command",
    "beat": "conveyor.beat.cli:beat_command",
    "monitor": "conveyor.monitor.cli:monitor_command",
    "status": "conveyor.monitor.cli:status_command",
    "inspect": "conveyor.monitor.cli:inspect_command",
    "control": "conveyor.control.cli:control_command",
}


class _LazyGroup(click.Group):
    """The top-level group: commands named in ``_LAZY_COMMANDS`` load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS and cmd_name not in self.commands:
            self._load(cmd_name)
        return self.commands.get(cmd_name)

    def _load(self, name: str) -> None:
        module, _, attr = _LAZY_COMMANDS[name].partition(":")
        command = getattr(importlib.import_module(module), attr)
        if command.name != name:  # the table and the command must agree
            raise RuntimeError(f"{_LAZY_COMMANDS[name]} is named {command.name!r}, not {name!r}")
        self.add_command(command)

    def all_commands(self) -> Mapping[str, click.Command]:
        """Every command by name, the lazy ones imported."""
        for name in _LAZY_COMMANDS:
            if name not in self.commands:
                self._load(name)
        return self.commands


def all_commands() -> Mapping[str, click.Command]:
    """Every top-level command of ``conveyor``, by name."""
    return main.all_commands()


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "spec", envvar="CONVEYOR_APP", help="module, module:app or package")
@click.option("--workdir", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="load KEY=VALUE lines (secrets) into the environment before the app")
@click.version_option(package_name="conveyor")
@click.pass_context
def main(ctx: click.Context, spec: str | None, workdir: str | None,
         env_file: str | None) -> None:
    """Conveyor: a production task queue."""
    if workdir:
        os.chdir(workdir)
    if env_file:
        _load_env_file(env_file)
    ctx.obj = Context(spec)


def _load_env_file(path: str) -> None:
    """What ``conveyor deploy supervisor`` points programs at (supervisord cannot read one)."""
    from conveyor._deploy import DeployError, parse_env_file

    if os.stat(path).st_mode & 0o077:
        click.echo(f"warning: {path} is readable by other users; chmod 600 it", err=True)
    try:
        os.environ.update(parse_env_file(Path(path).read_text(encoding="utf-8")))
    except DeployError as exc:
        raise click.UsageError(f"--env-file {path}: {exc}") from exc


class _Iso8601(click.ParamType):
    """Celery's ``ISO8601`` argument type (a naive time is UTC, as for ``eta=``)."""

    name = "iso-8601"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time", param, ctx)


class _Iso8601OrSeconds(_Iso8601):
    name = "iso-8601 or seconds"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        try:
            return float(value)
        except (TypeError, ValueError):
            return super().convert(value, param, ctx)


_ISO8601 = _Iso8601()
_ISO8601_OR_SECONDS = _Iso8601OrSeconds()


def _split(values: tuple[str, ...]) -> list[str]:
    return [q.strip() for v in values for q in v.split(",") if q.strip()]


@main.command()
@click.option("-Q", "--queues", multiple=True, help="queues to serve, comma separated")
@click.option("-X", "--exclude-queues", multiple=True,
              help="serve every queue (task_queues or the default) except these")
@click.option("-c", "--concurrency", type=int, default=None)
@click.option("--autoscale", default=None, metavar="MAX,MIN",
              help="grow the pool up to MAX slots with the backlog, shrink back to MIN")
@click.option("-P", "--pool",
              type=click.Choice(["prefork", "threads", "async", "solo", *GREENLET_POOLS]))
@click.option("-n", "--hostname", default=None, help="node name; %h expands to the host")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--prefetch-multiplier", type=int, default=None)
@click.option("-O", "--optimization", type=click.Choice(["fair", "default"]), default=None,
              help="accepted: every slot reserves only when free (see the startup note)")
@click.option("--max-tasks-per-child", type=int, default=None)
@click.option("--max-memory-per-child", type=int, default=None, help="KiB")
@click.option("--time-limit", type=float, default=None, help="hard limit, s (task_time_limit)")
@click.option("--soft-time-limit", type=float, default=None,
              help="soft limit, s (task_soft_time_limit)")
@click.option("--purge", "--discard", "purge_first", is_flag=True,
              help="drop every waiting message in the worker's queues before starting")
@click.option("-I", "--include", multiple=True, help="modules to import, comma separated")
@click.option("--heartbeat-interval", type=float, default=None,
              help="seconds between heartbeats (worker_heartbeat_interval)")
@click.option("-E", "--task-events", "--events", "task_events", is_flag=True,
              help="accepted: events are always on")
@click.option("--without-gossip", is_flag=True, help="accepted: there is no gossip")
@click.option("--without-mingle", is_flag=True, help="accepted: there is no mingle")
@click.option("--without-heartbeat", is_flag=True,
              help="accepted: heartbeats renew leases and stay on")
@click.option("-B", "--beat", is_flag=True, help="also run beat (under the same leader lease)")
@daemon_options
@pass_ctx
def worker(obj: Context, queues: tuple[str, ...], concurrency: int | None, pool: str | None,
           hostname: str | None, loglevel: str, prefetch_multiplier: int | None,
           max_tasks_per_child: int | None, max_memory_per_child: int | None,
           beat: bool, autoscale: str | None = None, **flags: Any) -> None:
    """Start a worker."""
    if pool == "eventlet":
        raise click.UsageError(EVENTLET_REFUSED)
    params = {"queues": queues, "concurrency": concurrency, "pool": pool,
              "hostname": hostname, "loglevel": loglevel,
              "prefetch_multiplier": prefetch_multiplier,
              "max_tasks_per_child": max_tasks_per_child,
              "max_memory_per_child": max_memory_per_child,
              "beat": beat, "autoscale": autoscale, **flags}
    if _EXEC_FOR_WORKER and pool in (None, "prefork") and os.name == "posix" \
            and not any(flags.get(key) for key in DAEMON_FLAGS):
        # The prefork children are forks of this process: start the worker in
        # a fresh interpreter without click (the module docstring of
        # conveyor._worker_start).  Returns only if it cannot.
        root = click.get_current_context().find_root()
        exec_worker(obj.spec, params, root.info_name or "conveyor", sys.argv[1:])
    with usage_errors():
        start_worker(lambda: obj.app, params)


@main.command()
@click.option("-Q", "--queues", multiple=True,
              help="queues to purge, comma separated (default: task_queues or the default)")
@click.option("-X", "--exclude-queues", multiple=True, help="queues not to purge")
@click.option("-f", "--force", is_flag=True, help="do not ask for confirmation")
@pass_ctx
def purge(obj: Context, queues: tuple[str, ...], exclude_queues: tuple[str, ...],
          force: bool) -> None:
    """Drop every ready and delayed message in the app's queues (or -Q's), minus -X's."""
    from conveyor.queues import queue_names

    conf = obj.app.conf
    chosen = _split(queues) or queue_names(conf.task_queues) or [conf.task_default_queue]
    excluded = set(_split(exclude_queues))
    names = sorted({name for name in chosen if name not in excluded})
    if not names:
        click.echo("No queues to purge.")
        return
    if not force:
        click.confirm(f"WARNING: this removes every waiting task from {len(names)} queue(s): "
                      f"{', '.join(names)}. There is no undo.\n(-f skips this question)\n"
                      "Delete them all?", abort=True)
    total = 0
    for name in names:
        count = obj.app.broker.purge(name)
        total += count
        click.echo(f"{name}: purged {count} messages")
    click.echo(f"Purged {total} message(s) from {len(names)} queue(s).")


@main.command()
@pass_ctx
def queues(obj: Context) -> None:
    """Queue depths: ready, delayed, in flight, dead."""
    stats = obj.app.broker.stats()
    rows = [(s.queue, s.ready, s.delayed, s.inflight, s.dead) for s in stats]
    _table(("queue", "ready", "delayed", "in-flight", "dead"), rows)


@main.group("dead-letters")
def dead_letters() -> None:
    """Inspect, replay or purge dead letters."""


@dead_letters.command("list")
@click.option("-Q", "--queue", default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def dead_list(obj: Context, queue: str | None, limit: int, as_json: bool) -> None:
    broker = obj.app.broker
    names = [queue] if queue else broker.queues()
    letters = [d for name in names for d in broker.dead_letters(name, limit=limit)]
    if as_json:
        from conveyor.monitor.data import redacted_body  # secret arguments hidden

        click.echo(json.dumps([{"id": d.id, "queue": d.queue, "reason": d.reason,
                                "failed_at": d.failed_at,
                                "body": redacted_body(obj.app, d.body).decode("utf-8", "replace")}
                               for d in letters]))
        return
    _table(("id", "queue", "reason"), [(d.id, d.queue, d.reason[:80]) for d in letters])


@dead_letters.command("replay")
@click.option("-Q", "--queue", required=True)
@click.argument("ids", nargs=-1)
@pass_ctx
def dead_replay(obj: Context, queue: str, ids: tuple[str, ...]) -> None:
    """Put dead letters back on their queue (all when no ids are given)."""
    count = obj.app.broker.replay_dead(queue, list(ids) or None)
    click.echo(f"replayed {count}")


@dead_letters.command("purge")
@click.option("-Q", "--queue", required=True)
@click.argument("ids", nargs=-1)
@pass_ctx
def dead_purge(obj: Context, queue: str, ids: tuple[str, ...]) -> None:
    """Delete dead letters for good (all when no ids are given)."""
    count = obj.app.broker.discard_dead(queue, list(ids) or None)
    click.echo(f"discarded {count}")


@main.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="also stop it if it is running")
@pass_ctx
def revoke(obj: Context, task_ids: tuple[str, ...], terminate: bool) -> None:
    """Revoke tasks by id."""
    obj.app.revoke(list(task_ids), terminate=terminate)
    click.echo(f"revoked {len(task_ids)}")


@main.command()
@click.argument("name")
@click.option("-a", "--args", default="[]", help="JSON list")
@click.option("-k", "--kwargs", default="{}", help="JSON object")
@click.option("--eta", type=_ISO8601, default=None, help="ISO 8601 time to run at")
@click.option("--countdown", type=float, default=None, help="seconds from now to run at")
@click.option("--expires", type=_ISO8601_OR_SECONDS, default=None,
              help="ISO 8601 time, or seconds from now, after which it is not run")
@click.option("--serializer", default="json", show_default=True)
@click.option("-Q", "--queue", default=None)
@pass_ctx
def call(obj: Context, name: str, args: str, kwargs: str, eta: datetime | None,
         countdown: float | None, expires: datetime | float | None, serializer: str,
         queue: str | None) -> None:
    """Send a task by name and print its id."""
    result = obj.app.send_task(name, _json(args, list, "--args"), _json(kwargs, dict, "--kwargs"),
                               queue=queue, countdown=countdown, eta=eta, expires=expires,
                               serializer=serializer)
    click.echo(result.id)


def _json(text: str, kind: type, option: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from exc
    if not isinstance(value, kind):
        raise click.BadParameter(f"must be a JSON {'list' if kind is list else 'object'}",
                                 param_hint=option)
    return value


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [tuple(str(c) for c in row) for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def run() -> None:
    global _EXEC_FOR_WORKER
    reexec_if_needed(sys.argv)  # -P gevent: this process again, patched before any import
    _EXEC_FOR_WORKER = True
    try:
        main()
    except ConfigurationError as exc:
        raise SystemExit(f"configuration error: {exc}") from exc


if __name__ == "__main__":
    run()
