"""What ``conveyor worker`` does once its options are parsed, without click.

A prefork child is a fork of the worker's main process, so every module that
process imported is in each child's resident memory.  The command line
(click, ``conveyor._cli``, ``_daemon``, ``difflib``) is 1.6 MiB of it per
process (docs/performance.md, round two, fourth pass: worker memory).  So
``conveyor worker``, run as a command, parses its options with click and then
replaces itself (``os.execv``, same process id) with an interpreter that runs
:func:`boot`: the same start-up, in this module, which never imports click.
The app is imported once, after the exec.  It costs the start ~0.09 s of CPU
(the first interpreter's imports), and the process's command line reads
``python -c <boot> -A proj worker ...`` (the options as typed, as under
``-P gevent``).  Only the prefork pool (named, or left to the settings)
does it; the daemon options (``-D``, ``--pidfile``, ``-f``...), whose errors
are click's, keep the command in one process.

The options travel in an environment variable as JSON, removed again before
the app is imported.  Usage mistakes found after the exec (no app at ``-A``,
``-X`` leaving no queue) raise :class:`UsageProblem`, which :func:`boot`
prints as click would have (click is imported for that, on the way out);
when the command runs in-process (``CliRunner``, Django's ``manage.py
conveyor``, a greenlet pool, the daemon options) the click command turns it
into click's ``UsageError``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from conveyor import _flag_notes as flag_notes
from conveyor._greenlets import _interpreter_options

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.cli")
APP_ATTRS = ("app", "conveyor_app", "celery_app", "celery", "conveyor")
APP_MODULES = ("conveyor", "celery")
#: The daemon options (``conveyor._daemon``): given any, the command runs in-process.
DAEMON_FLAGS = ("detach", "logfile", "pidfile", "uid", "gid", "umask", "executable")
_PLAN = "_CONVEYOR_WORKER_PLAN"  # the parsed options, across the exec (not a setting)
_BOOT = "import sys; sys.argv[0] = 'conveyor'; from conveyor._worker_start import boot; boot()"


class UsageProblem(Exception):
    """A mistake on the command line found after parsing (click's ``UsageError``)."""


# -- the app -------------------------------------------------------------------
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
    raise UsageProblem(
        f"-A {spec}: no Conveyor app found in {module_name} (looked for "
        f"{', '.join(APP_ATTRS)} and {module_name}.conveyor/.celery)"
    )


def _app_in(module: Any) -> Conveyor | None:
    from conveyor.app import Conveyor

    for name in APP_ATTRS:
        candidate = getattr(module, name, None)
        if isinstance(candidate, Conveyor):
            return candidate
    return next((v for v in vars(module).values() if isinstance(v, Conveyor)), None)


def _check(obj: Any, spec: str) -> Conveyor:
    from conveyor.app import Conveyor

    if not isinstance(obj, Conveyor):
        raise UsageProblem(f"-A {spec} is a {type(obj).__name__}, not a Conveyor app")
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


def load_app(spec: str | None) -> Conveyor:
    """The app ``-A`` names, configured from the environment (and Django set up)."""
    if not spec:
        raise UsageProblem("pass the app with -A/--app, e.g. conveyor -A proj worker")
    app = find_app(spec)
    app.config_from_env()
    _setup_django()
    return app


# -- the worker ----------------------------------------------------------------
def start_worker(get_app: Callable[[], Conveyor], params: Mapping[str, Any]) -> None:
    """``conveyor worker``'s work once its options are parsed: ``params`` are
    the command's keyword arguments (click's names and values)."""
    from conveyor.log import setup_logging_for
    from conveyor.worker import Worker
    from conveyor.worker.main import expand_hostname

    flags = dict(params)
    queues = flags.pop("queues")
    concurrency, pool = flags.pop("concurrency"), flags.pop("pool")
    hostname, loglevel = flags.pop("hostname"), flags.pop("loglevel")
    prefetch_multiplier = flags.pop("prefetch_multiplier")
    max_tasks_per_child = flags.pop("max_tasks_per_child")
    max_memory_per_child = flags.pop("max_memory_per_child")
    beat, autoscale = flags.pop("beat"), flags.pop("autoscale", None)
    app = get_app()
    notes = flag_notes.given(flags, flag_notes.WORKER_NOTES)
    _worker_settings(app, flags)
    serve = _worker_queues(app, _split(queues), _split(flags.pop("exclude_queues")))
    logfile = None
    if any(flags.get(key) for key in DAEMON_FLAGS):
        from conveyor._daemon import daemonize

        logfile = daemonize(flags, expand_hostname(hostname, app.main.split(".")[0]))
    else:
        for key in DAEMON_FLAGS:
            flags.pop(key, None)
    bounds = None
    if autoscale:  # the module is only for --autoscale: each prefork child would hold it
        from conveyor.worker.autoscale import parse_autoscale

        bounds = parse_autoscale(autoscale)
    # Celery's order: celeryd_init and worker_init (in Worker()), then logging.
    node = Worker(app, queues=serve, concurrency=concurrency, pool=pool,
                  hostname=hostname, prefetch_multiplier=prefetch_multiplier,
                  max_tasks_per_child=max_tasks_per_child,
                  max_memory_per_child=max_memory_per_child,
                  autoscale=bounds)
    setup_logging_for(app, loglevel, logfile=logfile)
    flag_notes.log_notes("worker", notes)
    if flags.pop("purge_first"):
        for name in node.queues:
            log.warning("--purge: dropped %d message(s) from %s", app.broker.purge(name), name)
    if beat:
        node.on_stop.append(_embedded_beat(app).stop)  # no new ticks once shutdown starts
    node.run()


def _split(values: tuple[str, ...]) -> list[str]:
    return [q.strip() for v in values for q in v.split(",") if q.strip()]


def _worker_settings(app: Conveyor, flags: dict[str, Any]) -> None:
    """Flags that are settings in Celery too: applied to ``app.conf`` as Celery does."""
    values = {key: flags.pop(flag) for flag, key in (
        ("time_limit", "task_time_limit"), ("soft_time_limit", "task_soft_time_limit"),
        ("heartbeat_interval", "worker_heartbeat_interval"))}
    values = {key: value for key, value in values.items() if value is not None}
    if values:
        app.conf.update(values, source="the worker command line")
    for module in _split(flags.pop("include")):
        importlib.import_module(module)


def _worker_queues(app: Conveyor, queues: list[str], exclude: list[str]) -> list[str] | None:
    """``-Q`` minus ``-X``; with only ``-X``, the app's queues minus those (as Celery)."""
    if not exclude:
        return queues or None
    from conveyor.queues import queue_names

    conf = app.conf
    base = queues or queue_names(conf.task_queues) or [conf.task_default_queue]
    left = [name for name in base if name not in exclude]
    if not left:
        raise UsageProblem(f"-X {','.join(exclude)} leaves no queue to serve "
                           f"(the worker would serve {', '.join(base)})")
    return left


def _embedded_beat(app: Conveyor) -> Any:
    try:
        from conveyor.beat import run_embedded
    except ImportError as exc:
        raise UsageProblem("beat is not available in this build") from exc
    return run_embedded(app)


# -- the exec ------------------------------------------------------------------
def exec_worker(spec: str | None, params: Mapping[str, Any], prog: str,
                argv: list[str]) -> None:
    """Replace this process with one that runs :func:`boot` with ``params``;
    returns only if it cannot (then the caller starts the worker itself)."""
    try:
        plan = json.dumps({"spec": spec, "params": dict(params), "prog": prog})
    except (TypeError, ValueError):  # an option value JSON cannot carry
        return
    os.environ[_PLAN] = plan
    sys.stdout.flush()
    sys.stderr.flush()
    # The interpreter's own options too (-O, -W, -X...): the stdlib's helper
    # for its own re-executions (multiprocessing's spawn), where there is one.
    options = getattr(subprocess, "_args_from_interpreter_flags", _interpreter_options)()
    try:
        os.execv(sys.executable, [sys.executable, *options, "-c", _BOOT, *argv])
    except OSError:
        del os.environ[_PLAN]


def boot() -> None:
    """The worker after the exec: the parsed options back, then the start-up."""
    from conveyor.exceptions import ConfigurationError

    plan = json.loads(os.environ.pop(_PLAN))
    # JSON has no tuples: the multiple options (-Q, -X, -I) come back as lists.
    params = {key: tuple(value) if isinstance(value, list) else value
              for key, value in plan["params"].items()}
    try:
        start_worker(lambda: load_app(plan["spec"]), params)
    except UsageProblem as exc:
        _show_usage_error(plan["prog"], str(exc))
        raise SystemExit(2) from None
    except ConfigurationError as exc:  # as conveyor._cli.run
        raise SystemExit(f"configuration error: {exc}") from exc
    except (EOFError, KeyboardInterrupt):  # as click's main
        print(file=sys.stderr)
        print("Aborted!", file=sys.stderr)
        raise SystemExit(1) from None


def _show_usage_error(prog: str, message: str) -> None:
    """Print ``message`` as click prints a usage error of ``conveyor worker``
    (the process is ending: importing click now costs nothing that stays)."""
    import click

    from conveyor._cli import main

    settings = main.context_settings
    parent = click.Context(main, info_name=prog, **settings)
    ctx = click.Context(main.get_command(parent, "worker") or main, info_name="worker",
                        parent=parent)
    click.UsageError(message, ctx).show()
