"""Commands: ``monitor`` (the web UI), and its terminal siblings ``status`` and ``inspect``.

``status`` and ``inspect scheduled`` read the same stores as the web pages
(through ``conveyor.monitor.data``), so a terminal and a browser never
disagree.  The other ``inspect`` subcommands ask the running workers, as
Celery's do (:mod:`conveyor.control.cli`); ``inspect stats`` adds the last
hour from the event store to the workers' answers.  They need no web
dependencies.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from conveyor import states
from conveyor._events import EventStore, store_for
from conveyor.control.cli import (
    WORKER_INSPECT,
    active_rows,
    ask,
    remote_options,
    stats_rows,
)
from conveyor.monitor import data, tasks


def _store(obj: Any) -> EventStore:
    return store_for(obj.app)


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [tuple("-" if c is None else str(c) for c in row) for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _mib(kib: Any) -> str:
    return f"{kib / 1024:.1f} MiB" if isinstance(kib, (int, float)) else "-"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


# -- monitor -----------------------------------------------------------------------
def credentials(options: tuple[str, ...], env_name: str | None, configured: list[str],
                files: tuple[str, ...] = ()) -> list[str]:
    """Admin ``user:pass`` entries from the flags, an environment variable, files and settings."""
    from conveyor.monitor.auth import read_users_file

    users = [*options, *configured]
    if env_name:
        value = os.environ.get(env_name)
        if not value:
            raise click.UsageError(f"--basic-auth-env {env_name}: the variable is not set")
        users.append(value)
    try:
        users += [entry for path in files for entry in read_users_file(path)]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    return users


def _warn_argv_secrets(basic_auth: tuple[str, ...], readonly_auth: tuple[str, ...]) -> None:
    flags = [name for name, given in (("--basic-auth", basic_auth),
                                      ("--readonly-auth", readonly_auth)) if given]
    if flags:
        click.echo(f"warning: {' and '.join(flags)} put passwords on the command line, where "
                   "every local user can read them (ps, /proc); use --basic-auth-env VAR, "
                   "--basic-auth-file PATH or CONVEYOR_MONITOR_BASIC_AUTH instead", err=True)


@click.command("monitor")
@click.option("--port", type=int, default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="interface to listen on (0.0.0.0 for all)")
@click.option("--basic-auth", "basic_auth", multiple=True, metavar="USER:PASS",
              help="an admin account (repeatable); visible in ps: prefer the env or file forms")
@click.option("--basic-auth-env", default=None, metavar="VAR",
              help="read USER:PASS[,USER:PASS] from this environment variable")
@click.option("--basic-auth-file", multiple=True, metavar="PATH",
              help="read admin USER:PASS lines from this file (mode 0600)")
@click.option("--readonly-auth", multiple=True, metavar="USER:PASS",
              help="an account that may look but not act (repeatable)")
@click.option("--readonly-auth-file", multiple=True, metavar="PATH",
              help="read read-only USER:PASS lines from this file")
@click.option("--certfile", default=None, help="serve HTTPS with this certificate (PEM)")
@click.option("--keyfile", default=None, help="the certificate's private key (PEM)")
@click.option("--trusted-proxy", multiple=True, metavar="ADDRESS[/BITS]",
              help="a single-sign-on proxy whose user header is believed (repeatable)")
@click.option("--proxy-user-header", default="X-Forwarded-User", show_default=True)
@click.option("--proxy-role", type=click.Choice(["readonly", "admin"]), default="readonly",
              show_default=True, help="what users vouched for by the proxy may do")
@click.option("--login-attempts", type=click.IntRange(1), default=10, show_default=True,
              help="failed logins per client within a minute before 429s start")
@click.option("--header-timeout", type=float, default=10.0, show_default=True,
              help="seconds a client has to send a request's headers")
@click.option("--body-timeout", type=float, default=30.0, show_default=True,
              help="seconds a request body may stall before 408")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.pass_obj
def monitor_command(obj: Any, port: int, address: str, basic_auth: tuple[str, ...],
                    basic_auth_env: str | None, basic_auth_file: tuple[str, ...],
                    readonly_auth: tuple[str, ...], readonly_auth_file: tuple[str, ...],
                    loglevel: str, **security: Any) -> None:
    """Serve the web dashboard, JSON API and /metrics (authentication required)."""
    try:
        import uvicorn

        from conveyor.monitor.app import create_app
    except ImportError as exc:
        raise click.UsageError(f"the monitor needs its extras: pip install 'conveyor[monitor]' "
                               f"({exc})") from exc
    _warn_argv_secrets(basic_auth, readonly_auth)
    app = obj.app
    users = credentials(basic_auth, basic_auth_env, list(app.conf.monitor_basic_auth),
                        basic_auth_file)
    readonly = [*readonly_auth, *app.conf.monitor_readonly_auth,
                *credentials((), None, [], readonly_auth_file)]
    if not users and not security["trusted_proxy"]:
        raise click.UsageError(
            "the monitor needs at least one account: --basic-auth-env VAR, --basic-auth-file "
            "PATH, CONVEYOR_MONITOR_BASIC_AUTH or monitor_basic_auth (or --trusted-proxy)")
    try:
        asgi, serve = _build(app, create_app, users, readonly, address, port, loglevel, security)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    app.finalize()
    click.echo(f"conveyor monitor on {serve.scheme}://{address}:{port}/ "
               f"({_count(len(users), 'admin account')}, "
               f"{_count(len(readonly), 'read-only account')}, "
               f"{_count(len(security['trusted_proxy']), 'trusted proxy', 'trusted proxies')})")
    uvicorn.run(asgi, **serve.uvicorn_kwargs())


def _build(app: Any, create_app: Any, users: list[str], readonly: list[str], address: str,
           port: int, loglevel: str, security: dict[str, Any]) -> tuple[Any, Any]:
    from conveyor.monitor.auth import LoginThrottle, ProxyTrust
    from conveyor.monitor.serve import ServeOptions

    serve = ServeOptions(host=address, port=port, certfile=security["certfile"],
                         keyfile=security["keyfile"],
                         header_timeout=security["header_timeout"],
                         log_level=loglevel.lower())
    if not 0 < security["body_timeout"] <= 3600:
        raise ValueError(f"--body-timeout must be in (0, 3600] seconds, "
                         f"got {security['body_timeout']}")
    proxy = ProxyTrust.parse(security["trusted_proxy"], security["proxy_user_header"],
                             security["proxy_role"])
    asgi = create_app(app, users, readonly, proxy=proxy,
                      throttle=LoginThrottle(limit=security["login_attempts"]),
                      body_timeout=security["body_timeout"])
    return asgi, serve


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


# -- status --------------------------------------------------------------------------
@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.pass_obj
def status_command(obj: Any, as_json: bool) -> None:
    """Workers: online or offline, what they run, what they did."""
    found = data.workers(_store(obj))
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    rows = [(w.get("id"), "online" if w["online"] else "OFFLINE", w.get("pool"),
             w.get("concurrency"), ",".join(w.get("queues") or []), w["active_count"],
             w.get("processed"), w.get("failed"), _mib(w.get("memory_kib")),
             _ago(w.get("last_seen"))) for w in found]
    _table(("worker", "status", "pool", "conc", "queues", "active", "processed", "failed",
            "memory", "heartbeat"), rows)
    online = sum(1 for w in found if w["online"])
    click.echo(f"\n{online} online, {len(found) - online} offline")


# -- inspect -------------------------------------------------------------------------
@click.group("inspect")
def inspect_command() -> None:
    """Look inside the running system: ask the workers (Celery's commands), or read
    the broker and event store (scheduled)."""


@inspect_command.command("active")
@remote_options
@click.pass_obj
def inspect_active(obj: Any, timeout: float, destination: str | None, as_json: bool) -> None:
    """Tasks running now, as each worker reports them, with progress where reported."""
    replies = ask(obj.app, "active", timeout, destination)
    if as_json:
        click.echo(json.dumps(replies, indent=2, default=str))
        return
    _table(("worker", "task id", "name", "queue", "running", "args", "progress"),
           active_rows(replies, _progress(obj.app, replies)))


def _progress(app: Any, replies: dict[str, Any]) -> dict[str, Any]:
    """Progress the running tasks stored with update_state (None where they did not)."""
    ids = [str(t["id"]) for running in replies.values() for t in running]
    try:
        stored = app.backend.get_many(ids) if ids else []
    except Exception:  # progress is a nicety; the workers' answer stands without it
        return {}
    out = {}
    for task_id, found in zip(ids, stored, strict=True):
        record = tasks.decode(found)
        if record is not None and record.state not in states.READY_STATES:
            out[task_id] = tasks.progress_of(record.result)
    return out


@inspect_command.command("scheduled")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def inspect_scheduled(obj: Any, as_json: bool) -> None:
    """Delayed messages waiting in the broker (countdown, eta, retry backoff) and beat entries."""
    app = obj.app
    delayed = [{"queue": s.queue, "delayed": s.delayed} for s in app.broker.stats()]
    beat = data.schedules(app)
    if as_json:
        click.echo(json.dumps({"delayed": delayed, "beat": beat}, indent=2, default=str))
        return
    click.echo("Delayed messages (they wait in the broker, not in workers):")
    _table(("queue", "delayed"), [(d["queue"], d["delayed"]) for d in delayed])
    click.echo(f"\nBeat (lease holder: {beat.get('holder') or 'nobody'}):")
    _table(("entry", "task", "schedule", "last run", "next run"),
           [(e.get("name"), e.get("task"), e.get("schedule"), e.get("last_run_at"),
             e.get("next_run")) for e in beat.get("entries", [])])


@inspect_command.command("stats")
@remote_options
@click.pass_obj
def inspect_stats(obj: Any, timeout: float, destination: str | None, as_json: bool) -> None:
    """Each worker's answer (Celery's stats), then per task outcomes and latency over
    the last hour from the event store (tables only; --json prints the workers' answers)."""
    replies = ask(obj.app, "stats", timeout, destination)
    if as_json:
        click.echo(json.dumps(replies, indent=2, default=str))
        return
    _table(("worker", "pid", "pool", "conc", "processed", "uptime"), stats_rows(replies))
    hour = data.overview(_store(obj), data.HOUR)
    click.echo(f"\nLast hour: {hour['totals']['total']:.0f} runs, "
               f"{hour['throughput_per_minute']:.1f}/min")
    _table(("task", "total", "ok", "failed", "retried", "run p50", "run p95", "wait p50"),
           [(t["name"], f"{t['total']:.0f}", f"{t['SUCCESS']:.0f}", f"{t['FAILURE']:.0f}",
             f"{t['RETRY']:.0f}", _secs(t["runtime_p50"]), _secs(t["runtime_p95"]),
             _secs(t["wait_p50"])) for t in hour["tasks"]])


for _command in WORKER_INSPECT:
    inspect_command.add_command(_command)
