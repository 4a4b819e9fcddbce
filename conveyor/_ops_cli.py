"""Operator commands: ``deploy`` (process manager configs) and ``report``."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from conveyor import _deploy as deploy
from conveyor import _redact as redact


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
@click.option("--beat-scheduler", default=None,
              help="beat's --scheduler, e.g. django (the database scheduler)")
@click.option("--monitor", is_flag=True, help="add the web monitor (bound to 127.0.0.1)")
@click.option("--monitor-port", type=int, default=None, help="the monitor's port (5555)")
@click.option("--monitor-auth-env", default=None,
              help="variable holding the monitor's USER:PASS (CONVEYOR_MONITOR_BASIC_AUTH)")
@click.option("--monitor-env-file", default=None,
              help="file that sets that variable for the monitor program (mode 0600)")
@click.option("--user", default=None, help="the unprivileged account the programs run as")
@click.option("--allow-root", is_flag=True, default=None,
              help="generate files without --user (the programs then run as root)")
@click.option("--env-file", default=None,
              help="where secret --env items are written, mode 0600 "
                   "(default /etc/conveyor/NAME.env)")
@click.option("--directory", default=None, help="working directory (default: here)")
@click.option("--venv", default=None, help="virtualenv holding conveyor (default: this one)")
@click.option("--log-dir", default=None,
              help="supervisor: where program logs go (default /var/log/conveyor; "
                   "created if missing)")
@click.option("--loglevel", default=None, help="-l of every program (INFO)")
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
        _write_env_file(spec)
        if target == "supervisor":
            _ensure_log_dir(spec)
    except deploy.DeployError as exc:
        raise click.UsageError(str(exc)) from exc


def _ensure_log_dir(spec: deploy.DeploySpec) -> None:
    """supervisord refuses to start a program whose log directory is missing: make it
    (owned by the programs' user when run as root), or say exactly how to."""
    path = spec.log_dir
    if os.path.isdir(path):
        return
    owner = f" && sudo chown {spec.user} {path}" if spec.user else ""
    try:
        os.makedirs(path, mode=0o750)
    except OSError as exc:
        click.echo(f"note: log directory {path} is missing and could not be created ({exc}); "
                   f"run: sudo mkdir -p {path}{owner}", err=True)
        return
    click.echo(f"note: created log directory {path}", err=True)
    if spec.user and os.geteuid() == 0:
        try:
            shutil.chown(path, user=spec.user)
        except (OSError, LookupError) as exc:
            click.echo(f"note: could not give {path} to {spec.user} ({exc}); "
                       f"run: sudo chown {spec.user} {path}", err=True)


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
        # Units that point at the secrets file are not for every local user either.
        mode = 0o640 if deploy.secret_env(spec) else 0o644
        for name, text in units.items():
            _write(folder / name, text, mode)
            click.echo(f"wrote {folder / name}")
    else:
        click.echo(deploy.docker_compose(spec))


def _write_env_file(spec: deploy.DeploySpec) -> None:
    """Secrets go to their own file, created mode 0600 (never world-readable, even briefly)."""
    text = deploy.env_file_text(spec)
    if text is None:
        return
    path = deploy.env_file_path(spec)
    try:
        _write(Path(path), text, 0o600)
    except OSError as exc:
        raise deploy.DeployError(f"cannot write the secrets file {path} ({exc.strerror}); "
                                 "choose another with --env-file") from exc
    click.echo(f"wrote the secret variables to {path} (mode 0600)", err=True)


def _write(path: Path, text: str, mode: int) -> None:
    """Create or replace ``path`` with ``mode`` from the first byte (no umask window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, mode)  # an existing file keeps its old mode on open(): set it
        handle.write(text)


@click.command("report")
@click.pass_context
def report_command(ctx: click.Context) -> None:
    """Versions and effective settings (secrets masked), for bug reports."""
    from conveyor import __version__
    from conveyor._registry_cli import registered

    app = ctx.obj.app
    tasks = registered(app)  # after autodiscovery, as a worker sees them
    click.echo(f"conveyor {__version__}  python {platform.python_version()}  "
               f"{platform.system()} {platform.release()}")
    for dist in ("redis", "Django", "click", "starlette", "uvicorn"):
        click.echo(f"  {dist}: {_version(dist)}")
    click.echo(f"app: {app.main}  tasks: {len(tasks)}")
    for key, value in sorted(app.conf.as_dict().items()):
        click.echo(f"  {key} = {redact.value(key, value)!r}")


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

    from conveyor._events import store_for
    from conveyor.exceptions import ConveyorError

    app = ctx.obj.app
    try:
        app.broker.ping()
    except (ConveyorError, OSError) as exc:
        where, why = redact.url(app.conf.broker_url), redact.text(str(exc))
        raise click.ClickException(f"broker {where} does not answer: {why}") from exc
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
