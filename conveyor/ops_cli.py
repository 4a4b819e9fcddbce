"""Operator commands: ``deploy`` (process manager configs) and ``report``."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import click

from conveyor import deploy


def _spec(app_spec: str, queues: tuple[str, ...], beat: bool, beat_scheduler: str | None,
          monitor: bool, options: dict[str, Any], shutdown_timeout: float) -> deploy.DeploySpec:
    env = tuple(deploy.parse_env(item) for item in options.pop("env"))
    directory = str(Path(options.pop("directory") or os.getcwd()).resolve())
    venv = options.pop("venv") or (sys.prefix if sys.prefix != sys.base_prefix else None)
    return deploy.DeploySpec(
        app=app_spec,
        workers=tuple(deploy.parse_queue_spec(q) for q in queues),
        beat=beat, beat_scheduler=beat_scheduler, monitor=monitor, env=env,
        directory=directory, venv=venv, shutdown_timeout=shutdown_timeout,
        **{k: v for k, v in options.items() if v is not None},
    )


@click.command("deploy")
@click.argument("target", type=click.Choice(["supervisor", "systemd", "compose", "docker-compose"]))
@click.option("--queue", "--worker", "queues", multiple=True,
              help="QUEUE[,QUEUE]:CONCURRENCY, one worker program each (repeatable)")
@click.option("--beat", is_flag=True, help="add exactly one beat program")
@click.option("--beat-scheduler", default=None)
@click.option("--monitor", is_flag=True)
@click.option("--monitor-port", type=int, default=None)
@click.option("--monitor-auth-env", default=None)
@click.option("--monitor-env-file", default=None)
@click.option("--user", default=None)
@click.option("--directory", default=None, help="working directory (default: here)")
@click.option("--venv", default=None, help="virtualenv holding conveyor (default: this one)")
@click.option("--log-dir", default=None)
@click.option("--loglevel", default=None)
@click.option("--name", default=None, help="prefix for program and unit names")
@click.option("--env", multiple=True, help="KEY=VALUE for every program (repeatable)")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="systemd: write unit files into this folder instead of printing")
@click.pass_context
def deploy_command(ctx: click.Context, target: str, queues: tuple[str, ...], beat: bool,
                   beat_scheduler: str | None, monitor: bool, output: str | None,
                   **options: Any) -> None:
    """Print a Supervisor config, systemd units or a docker-compose file."""
    context = ctx.obj
    if not context.spec:
        raise click.UsageError("pass the app with -A, e.g. conveyor -A proj deploy supervisor")
    timeout = context.app.conf.worker_shutdown_timeout
    try:
        spec = _spec(context.spec, queues, beat, beat_scheduler, monitor, options, timeout)
        _emit(target, spec, output)
    except deploy.DeployError as exc:
        raise click.UsageError(str(exc)) from exc


def _emit(target: str, spec: deploy.DeploySpec, output: str | None) -> None:
    if target == "supervisor":
        click.echo(deploy.supervisor_config(spec))
    elif target == "systemd":
        units = deploy.systemd_units(spec)
        if output is None:
            for name, text in units.items():
                click.echo(f"# ---- {name}\n{text}")
            return
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (folder / name).write_text(text)
            click.echo(f"wrote {folder / name}")
    else:
        click.echo(deploy.docker_compose(spec))


_SECRET_WORDS = ("password", "secret", "token", "auth", "key")


def _mask(key: str, value: Any) -> Any:
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:********@{host}"
    if any(word in key for word in _SECRET_WORDS) and value:
        return "********"
    return value


@click.command("report")
@click.pass_context
def report_command(ctx: click.Context) -> None:
    """Versions and effective settings (secrets masked), for bug reports."""
    from conveyor import __version__
    from conveyor.registry_cli import registered

    app = ctx.obj.app
    tasks = registered(app)  # after autodiscovery, as a worker sees them
    click.echo(f"conveyor {__version__}  python {platform.python_version()}  "
               f"{platform.system()} {platform.release()}")
    for dist in ("redis", "Django", "click", "starlette", "uvicorn"):
        click.echo(f"  {dist}: {_version(dist)}")
    click.echo(f"app: {app.main}  tasks: {len(tasks)}")
    for key, value in sorted(app.conf.as_dict().items()):
        click.echo(f"  {key} = {_mask(key, value)!r}")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


@click.command("healthcheck")
@click.option("--worker", "node", default=None,
              help="node name (-n) to look for; default: any worker on this host")
@click.pass_context
def healthcheck_command(ctx: click.Context, node: str | None) -> None:
    """Exit 0 when the broker answers and a worker here is heartbeating (for probes)."""
    import socket

    from conveyor.events import store_for
    from conveyor.exceptions import ConveyorError

    app = ctx.obj.app
    try:
        app.broker.ping()
    except (ConveyorError, OSError) as exc:
        raise click.ClickException(f"broker {app.conf.broker_url} does not answer: {exc}") from exc
    host = socket.gethostname()
    workers = [w for w in store_for(app).workers() if w.get("online")]
    mine = [w for w in workers if _is_ours(w, node, host)]
    if not mine:
        wanted = node or f"any worker on {host}"
        raise click.ClickException(f"no heartbeat from {wanted} ({len(workers)} online elsewhere)")
    click.echo(f"ok: broker answers; {len(mine)} worker(s) heartbeating: "
               + ", ".join(str(w.get("hostname")) for w in mine))


def _is_ours(worker: dict[str, Any], node: str | None, host: str) -> bool:
    name = str(worker.get("hostname") or "")
    if node is not None:
        return name == node
    return name.rpartition("@")[2] == host or name == host
