"""The ``conveyor`` command, shaped like Celery's: ``conveyor -A proj worker -l INFO``."""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

import click

from conveyor.app import Conveyor
from conveyor.beat_cli import beat_command
from conveyor.exceptions import ConfigurationError

APP_ATTRS = ("app", "conveyor_app", "celery_app", "celery", "conveyor")
APP_MODULES = ("conveyor", "celery")


def find_app(spec: str) -> Conveyor:
    """Resolve ``-A``: ``module``, ``module:attr``, or a package holding
    ``conveyor.py``/``celery.py`` with the app (the way Celery users type it)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        return _check(getattr(module, attr), spec)
    found = _app_in(module)
    if found is not None:
        return found
    for sub in APP_MODULES:
        try:
            submodule = importlib.import_module(f"{module_name}.{sub}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{module_name}.{sub}":
                raise
            continue
        found = _app_in(submodule)
        if found is not None:
            return found
    raise click.UsageError(
        f"-A {spec}: no Conveyor app found in {module_name} (looked for "
        f"{', '.join(APP_ATTRS)} and {module_name}.conveyor/.celery)"
    )


def _app_in(module: Any) -> Conveyor | None:
    for name in APP_ATTRS:
        candidate = getattr(module, name, None)
        if isinstance(candidate, Conveyor):
            return candidate
    return next((v for v in vars(module).values() if isinstance(v, Conveyor)), None)


def _check(obj: Any, spec: str) -> Conveyor:
    if not isinstance(obj, Conveyor):
        raise click.UsageError(f"-A {spec} is a {type(obj).__name__}, not a Conveyor app")
    return obj


def _setup_django() -> None:
    """Worker and beat set Django up before tasks are imported, when it is configured."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return
    try:
        import django
    except ImportError:
        return
    django.setup()


class Context:
    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self._app: Conveyor | None = None

    @property
    def app(self) -> Conveyor:
        if self._app is None:
            if not self.spec:
                raise click.UsageError("pass the app with -A/--app, e.g. conveyor -A proj worker")
            app = find_app(self.spec)
            app.config_from_env()
            _setup_django()
            self._app = app
        return self._app


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "spec", envvar="CONVEYOR_APP", help="module, module:app or package")
@click.option("--workdir", type=click.Path(exists=True, file_okay=False), default=None)
@click.version_option(package_name="conveyor")
@click.pass_context
def main(ctx: click.Context, spec: str | None, workdir: str | None) -> None:
    """Conveyor: a production task queue."""
    if workdir:
        os.chdir(workdir)
    ctx.obj = Context(spec)


def _split(values: tuple[str, ...]) -> list[str]:
    return [q.strip() for v in values for q in v.split(",") if q.strip()]


@main.command()
@click.option("-Q", "--queues", multiple=True, help="queues to serve, comma separated")
@click.option("-c", "--concurrency", type=int, default=None)
@click.option("-P", "--pool", type=click.Choice(["prefork", "threads", "async", "solo"]))
@click.option("-n", "--hostname", default=None, help="node name; %h expands to the host")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--prefetch-multiplier", type=int, default=None)
@click.option("--max-tasks-per-child", type=int, default=None)
@click.option("--max-memory-per-child", type=int, default=None, help="KiB")
@click.option("-B", "--beat", is_flag=True, help="also run beat (under the same leader lease)")
@pass_ctx
def worker(obj: Context, queues: tuple[str, ...], concurrency: int | None, pool: str | None,
           hostname: str | None, loglevel: str, prefetch_multiplier: int | None,
           max_tasks_per_child: int | None, max_memory_per_child: int | None,
           beat: bool) -> None:
    """Start a worker."""
    from conveyor.log import setup_logging_for
    from conveyor.worker import Worker

    # Celery's order: celeryd_init and worker_init (in Worker()), then logging.
    node = Worker(obj.app, queues=_split(queues) or None, concurrency=concurrency, pool=pool,
                  hostname=hostname, prefetch_multiplier=prefetch_multiplier,
                  max_tasks_per_child=max_tasks_per_child,
                  max_memory_per_child=max_memory_per_child)
    setup_logging_for(obj.app, loglevel)
    if beat:
        node.on_stop.append(_embedded_beat(obj.app).stop)  # no new ticks once shutdown starts
    node.run()


def _embedded_beat(app: Conveyor) -> Any:
    try:
        from conveyor.beat import run_embedded
    except ImportError as exc:
        raise click.UsageError("beat is not available in this build") from exc
    return run_embedded(app)


@main.command()
@click.option("-Q", "--queues", multiple=True, required=True)
@click.option("-f", "--force", is_flag=True, help="do not ask for confirmation")
@pass_ctx
def purge(obj: Context, queues: tuple[str, ...], force: bool) -> None:
    """Drop every ready and delayed message in the given queues."""
    names = _split(queues)
    if not force:
        click.confirm(f"Drop all waiting messages in {', '.join(names)}?", abort=True)
    for name in names:
        click.echo(f"{name}: purged {obj.app.broker.purge(name)} messages")


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
        click.echo(json.dumps([{"id": d.id, "queue": d.queue, "reason": d.reason,
                                "failed_at": d.failed_at,
                                "body": d.body.decode("utf-8", "replace")} for d in letters]))
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
@click.option("-Q", "--queue", default=None)
@click.option("--countdown", type=float, default=None)
@pass_ctx
def call(obj: Context, name: str, args: str, kwargs: str, queue: str | None,
         countdown: float | None) -> None:
    """Send a task by name and print its id."""
    result = obj.app.send_task(name, json.loads(args), json.loads(kwargs), queue=queue,
                               countdown=countdown)
    click.echo(result.id)


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [tuple(str(c) for c in row) for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _register_commands() -> None:
    from conveyor.celery_drain_cli import drain_celery_command
    from conveyor.migrate.cli import migrate_command
    from conveyor.ops_cli import deploy_command, healthcheck_command, report_command
    from conveyor.registry_cli import tasks_command

    main.add_command(tasks_command)
    main.add_command(migrate_command)
    main.add_command(drain_celery_command)
    main.add_command(deploy_command)
    main.add_command(report_command)
    main.add_command(healthcheck_command)


_register_commands()
main.add_command(beat_command)


def _register_monitor_commands() -> None:
    from conveyor.monitor.cli import inspect_command, monitor_command, status_command

    for command in (monitor_command, status_command, inspect_command):
        main.add_command(command)


_register_monitor_commands()


def run() -> None:
    try:
        main()
    except ConfigurationError as exc:
        raise SystemExit(f"configuration error: {exc}") from exc


if __name__ == "__main__":
    run()
