"""Deployment files for a Conveyor project: supervisord, systemd, docker compose.

Everything here is a pure function from a :class:`DeploySpec` to text, so the
output can be checked in tests and diffed in review before it is installed.
The CLI (``conveyor deploy``) only builds the spec and writes the files.

Three process managers, one shape:

* one long-running process per :class:`QueueWorker`, named ``<label>@%h``
  so two machines never report the same worker name;
* at most one beat (the leader lease makes a second one harmless, but a
  second one is still wasted work, so we never generate it);
* optionally the monitor, bound to 127.0.0.1 and reading its basic-auth
  credentials from an environment variable, so no secret lands in a file
  that is usually world-readable and often committed.

Each manager gets the same stop contract: SIGTERM to the main process, then
``shutdown_timeout + STOP_MARGIN_SECONDS`` before anything is killed, so a
worker's warm shutdown (finish running tasks, ack them) always completes
before the manager loses patience.

Each format has its own escaping, and getting it wrong silently changes what
runs, so every value we write passes through one escaper per format:

* supervisord %-expands every value (``%%`` for a literal ``%``), splits
  ``command`` with :func:`shlex.split`, parses ``environment`` with a
  non-POSIX shlex that has no escape character, and treats `` ;`` / `` #``
  as the start of an inline comment;
* systemd expands ``%`` specifiers everywhere, ``$`` variables in
  ``ExecStart``, and unquotes C-style within double quotes;
* docker compose interpolates ``$`` in every string (``$$`` for a literal).

Values a format cannot represent raise :class:`DeployError` naming the value
rather than being written in a form that means something else.

Two defaults protect a careless deployment (issue 15, finding 4):

* no file is generated without ``user`` (the programs would run as root)
  unless ``allow_root`` says that is meant;
* an ``env`` item whose name or value looks secret (``redact.is_secret_key``,
  or a URL with a password) is never written inline: it goes to one
  environment file (``env_file``, mode 0600, written by the CLI) that the
  generated files reference by path: systemd ``EnvironmentFile=``, compose
  ``env_file:``, and for supervisord (which has no such setting) the
  ``conveyor --env-file PATH`` option, which loads it before the app.  The
  "regenerate" comment names those variables but never their values.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TypeAlias

from conveyor import _redact as redact
from conveyor.exceptions import ConveyorError

__all__ = [
    "MONITOR_AUTH_FLAG",
    "STOP_MARGIN_SECONDS",
    "DeployError",
    "DeploySpec",
    "QueueWorker",
    "docker_compose",
    "env_file_text",
    "parse_env",
    "parse_env_file",
    "parse_queue_spec",
    "regenerate_command",
    "secret_env",
    "stop_timeout",
    "supervisor_config",
    "supervisord_main_config",
    "systemd_units",
]

#: Seconds a process manager waits beyond ``shutdown_timeout`` before SIGKILL:
#: the worker's own timeout starts only once it has noticed the signal and
#: stopped consuming, and interpreter teardown takes a moment after that.
STOP_MARGIN_SECONDS = 10

#: The monitor option that names the environment variable holding
#: ``user:password``; the monitor reads the variable itself, so the secret is
#: neither in the generated file nor in the process's argv (visible in ``ps``).
MONITOR_AUTH_FLAG = "--basic-auth-env"

#: Settings the monitor reads its accounts from (``config_from_env``): like
#: ``monitor_auth_env`` they belong to the monitor's own environment, never
#: to every program's.
_MONITOR_CREDENTIAL_SUFFIXES = ("_MONITOR_BASIC_AUTH", "_MONITOR_READONLY_AUTH")

_START_SECONDS = 5  # a process that lives this long counts as started
_WORKER_PRIORITY = 200  # supervisord starts low numbers first, stops them last
_BEAT_PRIORITY = 300  # beat after workers, so nothing it sends waits for a consumer
_MONITOR_PRIORITY = 400

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMPORT_PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_.]*)?")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SAFE_WORD_RE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


class DeployError(ConveyorError, ValueError):
    """A deployment spec that cannot be turned into correct configuration."""


@dataclass(frozen=True)
class QueueWorker:
    """One worker process: the queues it consumes and its pool size.

    ``queue`` is the comma-separated ``-Q`` value, so ``"default,orders"`` is
    a single worker serving both queues.
    """

    queue: str
    concurrency: int = 1

    def __post_init__(self) -> None:
        queues = self.queue.split(",")
        for name in queues:
            if not _NAME_RE.fullmatch(name):
                raise DeployError(
                    f"bad queue name {name!r} in {self.queue!r}: use letters, digits, '_', '.', '-'"
                )
        if len(set(queues)) != len(queues):
            raise DeployError(f"queue listed twice in {self.queue!r}")
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int):
            raise DeployError(f"concurrency for {self.queue!r} must be an integer")
        if self.concurrency < 1:
            raise DeployError(
                f"concurrency for {self.queue!r} must be at least 1, got {self.concurrency}"
            )

    @property
    def queues(self) -> tuple[str, ...]:
        """The individual queue names."""
        return tuple(self.queue.split(","))

    @property
    def label(self) -> str:
        """The worker's name in program / unit / service names and in ``-n``."""
        return "-".join(self.queues)

    def as_spec(self) -> str:
        """The ``queue:concurrency`` text that :func:`parse_queue_spec` reads back."""
        return f"{self.queue}:{self.concurrency}"


@dataclass(frozen=True)
class DeploySpec:
    """Everything the generators need; validated on construction.

    Host paths (``directory``, ``venv``, ``log_dir``) matter to supervisord
    and systemd, which require them absolute; docker compose ignores them
    because the image decides where the code lives and logs go to stdout.
    """

    app: str
    workers: tuple[QueueWorker, ...]
    beat: bool = False
    beat_scheduler: str | None = None
    monitor: bool = False
    monitor_port: int = 5555
    monitor_auth_env: str = "CONVEYOR_MONITOR_AUTH"
    user: str | None = None
    directory: str = "."
    venv: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    log_dir: str = "/var/log/conveyor"
    loglevel: str = "INFO"
    shutdown_timeout: float = 60.0
    name: str = "conveyor"
    #: systemd only: the file holding ``monitor_auth_env=user:password`` for the
    #: monitor unit; ``None`` means ``/etc/conveyor/<name>-monitor.env``.
    monitor_env_file: str | None = None
    #: Generate files whose programs run as root (no ``user``): refused unless set.
    allow_root: bool = False
    #: Where secret ``env`` items go; ``None`` means ``/etc/conveyor/<name>.env``.
    env_file: str | None = None

    def __post_init__(self) -> None:
        _check_processes(self)
        _check_names(self)
        _check_numbers(self)
        _check_env(self.env, self.monitor_auth_env)
        for label, path in _host_paths(self):
            _check_text(label, path)
            if not path:
                raise DeployError(f"{label} must not be empty")

    @property
    def executable(self) -> str:
        """The ``conveyor`` command: the venv's if one is given, else from PATH."""
        if self.venv is None:
            return "conveyor"
        return f"{self.venv.rstrip('/')}/bin/conveyor"


def _host_paths(spec: DeploySpec) -> list[tuple[str, str]]:
    paths = [("directory", spec.directory), ("log_dir", spec.log_dir)]
    if spec.venv is not None:
        paths.append(("venv", spec.venv))
    if spec.monitor_env_file is not None:
        paths.append(("monitor_env_file", spec.monitor_env_file))
    if secret_env(spec):
        paths.append(("env_file", env_file_path(spec)))
    return paths


def _check_processes(spec: DeploySpec) -> None:
    if not spec.workers and not spec.beat and not spec.monitor:
        raise DeployError("nothing to deploy: give at least one worker, or beat, or monitor")
    seen: dict[str, QueueWorker] = {}
    for worker in spec.workers:
        if not isinstance(worker, QueueWorker):
            raise DeployError(f"workers must be QueueWorker items, got {worker!r}")
        if worker.label in seen:
            raise DeployError(
                f"two workers would both be named {worker.label!r}: "
                f"{seen[worker.label].as_spec()!r} and {worker.as_spec()!r}"
            )
        seen[worker.label] = worker
    if spec.beat_scheduler is not None and not spec.beat:
        raise DeployError("beat_scheduler is set but beat is not enabled")


def _check_names(spec: DeploySpec) -> None:
    if not _IMPORT_PATH_RE.fullmatch(spec.app):
        raise DeployError(f"bad app {spec.app!r}: expected a module path like 'myproject'")
    if spec.beat_scheduler is not None and not _IMPORT_PATH_RE.fullmatch(spec.beat_scheduler):
        raise DeployError(
            f"bad beat scheduler {spec.beat_scheduler!r}: expected 'package.module:ClassName'"
        )
    if not _NAME_RE.fullmatch(spec.name):
        raise DeployError(f"bad name {spec.name!r}: use letters, digits, '_', '.', '-'")
    if spec.user is not None and not _USER_RE.fullmatch(spec.user):
        raise DeployError(f"bad user {spec.user!r}")
    if not _ENV_KEY_RE.fullmatch(spec.monitor_auth_env):
        raise DeployError(f"bad monitor_auth_env {spec.monitor_auth_env!r}: not a variable name")
    if spec.loglevel.upper() not in _LOG_LEVELS:
        raise DeployError(
            f"bad loglevel {spec.loglevel!r}: expected one of {', '.join(_LOG_LEVELS)}"
        )


def _check_numbers(spec: DeploySpec) -> None:
    port = spec.monitor_port
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise DeployError(f"bad monitor_port {port!r}: expected 1-65535")
    timeout = spec.shutdown_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise DeployError(f"shutdown_timeout must be a number of seconds, got {timeout!r}")
    if not math.isfinite(timeout) or timeout < 0:
        raise DeployError(f"shutdown_timeout must be finite and >= 0, got {timeout!r}")


def _check_env(env: Iterable[tuple[str, str]], auth_env: str) -> None:
    seen: set[str] = set()
    for key, value in env:
        if not _ENV_KEY_RE.fullmatch(key):
            raise DeployError(f"bad environment variable name {key!r}")
        if key in seen:
            raise DeployError(f"environment variable {key!r} given twice")
        if key == auth_env or key.endswith(_MONITOR_CREDENTIAL_SUFFIXES):
            raise DeployError(
                f"{key} holds the monitor's credentials: the monitor reads them from "
                f"${auth_env}, set in the monitor's own environment (see --monitor-env-file), "
                "not in every program's"
            )
        _check_text(f"environment variable {key}", value)
        seen.add(key)


def _check_text(label: str, value: str) -> None:
    """Reject control characters and line separators.

    None of the three formats can carry a newline in a value safely, and
    YAML treats the Unicode line separators as line breaks too.
    """
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
        raise DeployError(f"{label} contains a control character (newline, tab, ...)")


# --- parsing command-line items -------------------------------------------


def parse_queue_spec(text: str) -> QueueWorker:
    """Parse ``"default:4"``, ``"orders"`` or ``"default,orders:2"``.

    Concurrency defaults to 1 rather than the CPU count: the machine that
    generates the files is rarely the one that runs them, so a count taken
    here would be wrong in a way nobody notices.  Ask for more explicitly.
    """
    queue, sep, count = text.strip().partition(":")
    queue = ",".join(part.strip() for part in queue.split(","))
    if not queue:
        raise DeployError(f"bad queue spec {text!r}: no queue name before ':'")
    concurrency = 1
    if sep:
        count = count.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", count):
            raise DeployError(
                f"bad queue spec {text!r}: concurrency after ':' must be a whole number"
            )
        concurrency = int(count)
    try:
        return QueueWorker(queue=queue, concurrency=concurrency)
    except DeployError as exc:
        raise DeployError(f"bad queue spec {text!r}: {exc}") from None


def parse_env(text: str) -> tuple[str, str]:
    """Parse one ``KEY=VALUE`` item; the value may be empty or contain ``=``."""
    key, sep, value = text.partition("=")
    if not sep:
        raise DeployError(f"bad environment item {text!r}: expected KEY=VALUE")
    if not _ENV_KEY_RE.fullmatch(key):
        raise DeployError(
            f"bad environment item {text!r}: {key!r} is not a variable name "
            "(letters, digits and '_', not starting with a digit)"
        )
    try:
        _check_text("value", value)
    except DeployError as exc:
        raise DeployError(f"bad environment item {text!r}: {exc}") from None
    return key, value


# --- the processes, independent of any format -----------------------------


@dataclass(frozen=True)
class _Program:
    """One process to run: its role suffix, its arguments after the executable."""

    suffix: str  # "worker-default", "beat", "monitor"
    args: tuple[str, ...]
    priority: int


def _programs(spec: DeploySpec, monitor_address: str = "127.0.0.1") -> list[_Program]:
    level = spec.loglevel.upper()
    out = [
        _Program(
            suffix=f"worker-{worker.label}",
            args=(
                "-A", spec.app, "worker", "-Q", worker.queue, "-c", str(worker.concurrency),
                "-l", level, "-n", f"{worker.label}@%h",
            ),
            priority=_WORKER_PRIORITY,
        )
        for worker in spec.workers
    ]
    if spec.beat:
        args: tuple[str, ...] = ("-A", spec.app, "beat", "-l", level)
        if spec.beat_scheduler:
            args += ("--scheduler", spec.beat_scheduler)
        out.append(_Program("beat", args, _BEAT_PRIORITY))
    if spec.monitor:
        args = (
            "-A", spec.app, "monitor", "--port", str(spec.monitor_port),
            "--address", monitor_address, MONITOR_AUTH_FLAG, spec.monitor_auth_env,
        )
        out.append(_Program("monitor", args, _MONITOR_PRIORITY))
    return out


def stop_timeout(spec: DeploySpec) -> int:
    """Whole seconds a process manager waits after SIGTERM before SIGKILL."""
    return math.ceil(spec.shutdown_timeout) + STOP_MARGIN_SECONDS


# Spec fields that map one-to-one onto a ``conveyor deploy`` option of the
# same name (underscores become dashes), with their defaults: an option left
# at its default is left out of the command, to keep it readable.
_OPTION_DEFAULTS = {
    field.name: field.default
    for field in fields(DeploySpec)
    if field.name not in ("app", "workers", "beat", "beat_scheduler", "monitor", "env",
                          "allow_root")
}


def regenerate_command(spec: DeploySpec, target: str) -> str:
    """The ``conveyor deploy`` command line that produces these files again."""
    words = ["conveyor", "-A", spec.app, "deploy", target]
    words += [f"--queue={worker.as_spec()}" for worker in spec.workers]
    if spec.beat:
        words.append("--beat")
    if spec.beat_scheduler:
        words.append(f"--beat-scheduler={spec.beat_scheduler}")
    if spec.monitor:
        words.append("--monitor")
    for name, default in _OPTION_DEFAULTS.items():
        value = getattr(spec, name)
        if value != default:
            words.append(f"--{name.replace('_', '-')}={value}")
    if spec.allow_root:
        words.append("--allow-root")
    words += [f"--env={key}={value}" for key, value in public_env(spec)]
    return shlex.join(words)


# --- secrets: which env items go to the environment file ------------------


def is_secret(key: str, value: str) -> bool:
    """A name like ``*_PASSWORD``/``*_TOKEN``, or a value holding a URL password."""
    return redact.is_secret_key(key) or redact.text(value) != value


def secret_env(spec: DeploySpec) -> tuple[tuple[str, str], ...]:
    """The ``env`` items that go to the environment file."""
    return tuple((k, v) for k, v in spec.env if is_secret(k, v))


def public_env(spec: DeploySpec) -> tuple[tuple[str, str], ...]:
    """The ``env`` items written inline."""
    return tuple((k, v) for k, v in spec.env if not is_secret(k, v))


def env_file_path(spec: DeploySpec) -> str:
    """Where the secret ``env`` items are written (absolute for supervisord and systemd)."""
    return spec.env_file or f"/etc/conveyor/{spec.name}.env"


def env_file_text(spec: DeploySpec) -> str | None:
    """The environment file's content (``KEY='value'`` lines), or None without secrets.

    Single quotes are literal for systemd, compose and :func:`parse_env_file`;
    a value holding one is double-quoted with ``\\ " $ ` `` escaped instead.
    """
    secrets = secret_env(spec)
    if not secrets:
        return None
    lines = [f"# Secrets for the {spec.name} programs (conveyor deploy). Keep it mode 0600."]
    lines += [f"{key}={_env_file_value(value)}" for key, value in secrets]
    return "\n".join(lines) + "\n"


def _env_file_value(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    return '"' + re.sub(r'([\\"$`])', r"\\\1", value) + '"'


def parse_env_file(text: str) -> dict[str, str]:
    """Read what :func:`env_file_text` writes (and plain ``KEY=value`` lines)."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not _ENV_KEY_RE.fullmatch(key.strip()):
            raise DeployError(f"environment file line {number}: expected KEY=VALUE")
        found[key.strip()] = _unquote(value.strip())
    return found


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _require_user(spec: DeploySpec, target: str) -> None:
    if spec.user is None and not spec.allow_root:
        raise DeployError(
            f"{target}: no --user given, so every program would run as root; pass --user NAME "
            "(an unprivileged account), or --allow-root if root is really meant"
        )



def _header(spec: DeploySpec, target: str, notes: Sequence[str] = ()) -> list[str]:
    lines = [
        f"# Generated by `conveyor deploy {target}`. Edits here are lost when it is",
        "# regenerated; change the options and run again instead:",
        f"#   {regenerate_command(spec, target)}",
    ]
    secrets = secret_env(spec)
    if secrets:
        names = ", ".join(key for key, _ in secrets)
        lines += [f"# {names}: kept in {env_file_path(spec)} (mode 0600), not here;",
                  "# give them again with --env when you regenerate."]
    lines += [f"# {note}" for note in notes]
    return lines


def _auth_note(spec: DeploySpec, where: str) -> list[str]:
    if not spec.monitor:
        return []
    return [
        f"The monitor reads its credentials (user:password) from ${spec.monitor_auth_env};",
        f"set it {where}, never in this file.",
    ]


# --- supervisord ----------------------------------------------------------

# Supervisord sends the stop signal to the main process only (stopasgroup
# false) for the same reason systemd uses KillMode=mixed: the worker's main
# process runs the warm shutdown and tells its pool to finish; a TERM that
# also hit every pool child would cut running tasks short.  killasgroup makes
# the final SIGKILL reach the whole group, so a stuck pool is never orphaned.
_SUPERVISOR_STOP = (("stopasgroup", "false"), ("killasgroup", "true"))


def _sup(label: str, value: str) -> str:
    """Escape one supervisord value: ``%`` doubles; inline comments are refused."""
    if re.search(r"\s[;#]", value):
        raise DeployError(
            f"{label} {value!r} contains ' ;' or ' #', which supervisord reads as a comment"
        )
    return value.replace("%", "%%")


def _sup_env_value(key: str, value: str) -> str:
    """Quote a value for supervisord's ``environment=`` parser.

    That parser is a non-POSIX shlex: a quoted string runs to the next quote
    of the same kind with no escape character, and surrounding quote
    characters are stripped from every value afterwards.  So double quotes
    work unless the value contains ``"``, in which case single quotes do;
    a value with both kinds, or starting or ending with one, has no spelling.
    """
    unrepresentable = f"environment variable {key}: supervisord cannot represent {value!r}"
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        raise DeployError(f"{unrepresentable} (it starts or ends with a quote)")
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    raise DeployError(f"{unrepresentable} (it contains both kinds of quote)")


def _supervisor_environment(spec: DeploySpec) -> str:
    return ",".join(
        f"{key}={_sup(f'environment variable {key}', _sup_env_value(key, value))}"
        for key, value in public_env(spec)
    )


def _supervisor_command(spec: DeploySpec, program: _Program) -> str:
    # supervisord has no environment-file setting: conveyor loads it itself.
    head = (spec.executable, "--env-file", env_file_path(spec)) if secret_env(spec) else (
        spec.executable,)
    return shlex.join((*head, *program.args))


def _require_absolute(spec: DeploySpec, target: str) -> None:
    for label, path in _host_paths(spec):
        if not path.startswith("/"):
            raise DeployError(
                f"{target} needs an absolute {label}, got {path!r}: its processes do not "
                "start in the directory you generated the files from"
            )


def _program_names(spec: DeploySpec) -> list[str]:
    return [f"{spec.name}-{program.suffix}" for program in _programs(spec)]


def _supervisor_programs(spec: DeploySpec) -> list[str]:
    _require_absolute(spec, "supervisor")
    _require_user(spec, "supervisor")
    names = _program_names(spec)
    lines = [f"[group:{spec.name}]", f"programs={','.join(names)}", ""]
    environment = _supervisor_environment(spec)
    log_dir = spec.log_dir.rstrip("/") or "/"
    for name, program in zip(names, _programs(spec), strict=True):
        command = _supervisor_command(spec, program)
        lines += [f"[program:{name}]", f"command={_sup('command', command)}"]
        lines.append(f"directory={_sup('directory', spec.directory)}")
        if spec.user:
            lines.append(f"user={spec.user}")
        if environment:
            lines.append(f"environment={environment}")
        lines += [
            "autostart=true",
            "autorestart=true",
            f"startsecs={_START_SECONDS}",
            "stopsignal=TERM",
            f"stopwaitsecs={stop_timeout(spec)}",
            *(f"{key}={value}" for key, value in _SUPERVISOR_STOP),
            f"priority={program.priority}",
            f"stdout_logfile={_sup('log_dir', f'{log_dir}/{name}.log')}",
            f"stderr_logfile={_sup('log_dir', f'{log_dir}/{name}.err.log')}",
            "",
        ]
    return lines


def supervisor_config(spec: DeploySpec) -> str:
    """A supervisord include file (for ``conf.d``) with one group of programs."""
    header = _header(spec, "supervisor", _auth_note(spec, "in supervisord's own environment"))
    return "\n".join([*header, "", *_supervisor_programs(spec)]).rstrip("\n") + "\n"


def supervisord_main_config(
    spec: DeploySpec,
    conf_dir: str,
    pidfile: str,
    logfile: str,
    socket_path: str,
    *,
    nodaemon: bool = False,
) -> str:
    """A standalone ``supervisord.conf`` with the programs inline.

    Useful where there is no system supervisord, and to run the generated
    programs without root (``supervisord -c FILE``).  ``conf_dir`` is where
    supervisord runs and keeps its automatic child logs.
    """
    own_paths = (
        ("conf_dir", conf_dir),
        ("pidfile", pidfile),
        ("logfile", logfile),
        ("socket_path", socket_path),
    )
    for label, path in own_paths:
        _check_text(label, path)
    header = _header(
        spec, "supervisor", _auth_note(spec, "in the environment that starts supervisord")
    )
    main = [
        "[supervisord]",
        f"directory={_sup('conf_dir', conf_dir)}",
        f"childlogdir={_sup('conf_dir', conf_dir)}",
        f"pidfile={_sup('pidfile', pidfile)}",
        f"logfile={_sup('logfile', logfile)}",
        f"nodaemon={'true' if nodaemon else 'false'}",
        "",
        "[unix_http_server]",
        f"file={_sup('socket_path', socket_path)}",
        # Only the owner may talk to supervisord: the socket can start and stop
        # every program, so it is as sensitive as the programs' user.
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_sup('socket_path', socket_path)}",
        "",
    ]
    return "\n".join([*header, "", *main, *_supervisor_programs(spec)]).rstrip("\n") + "\n"


# --- systemd --------------------------------------------------------------


def _systemd_escape(value: str) -> str:
    """Protect ``%`` from specifier expansion (every systemd setting has it)."""
    return value.replace("%", "%%")


def _systemd_word(word: str) -> str:
    """One ``ExecStart`` word: quoted if needed, ``$`` and ``%`` doubled."""
    escaped = _systemd_escape(word).replace("$", "$$")
    if _SAFE_WORD_RE.fullmatch(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_env_line(key: str, value: str) -> str:
    """``Environment="KEY=value"``: one quoted word; no ``$`` expansion there."""
    assignment = f"{key}={value}".replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{_systemd_escape(assignment)}"'


def _exec_start(spec: DeploySpec, program: _Program) -> str:
    # systemd wants an absolute path to execute; without a venv we let env(1)
    # find conveyor on PATH at start time rather than guess where it lives.
    head = ["/usr/bin/env", "conveyor"] if spec.venv is None else [spec.executable]
    return " ".join(_systemd_word(word) for word in (*head, *program.args))


def _systemd_service(spec: DeploySpec, name: str, program: _Program) -> str:
    target = f"{spec.name}.target"
    notes: list[str] = []
    if program.suffix == "monitor":
        notes = _auth_note(spec, f"in {_monitor_env_file(spec)} (mode 0600)")
    lines = [
        *_header(spec, "systemd", notes),
        "",
        "[Unit]",
        f"Description={_systemd_escape(f'Conveyor {program.suffix} for {spec.app}')}",
        "Wants=network-online.target",
        "After=network-online.target",
        f"PartOf={target}",
        # Keep restarting however often the process dies: while the broker is
        # down the worker backs off itself, and a unit that hit the start
        # limit would stay dead after the broker came back.
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
    ]
    if spec.user:
        lines.append(f"User={_systemd_escape(spec.user)}")
    lines.append(f"WorkingDirectory={_systemd_escape(spec.directory)}")
    lines += [_systemd_env_line(key, value) for key, value in public_env(spec)]
    if secret_env(spec):
        lines.append(f"EnvironmentFile={_systemd_escape(env_file_path(spec))}")
    if program.suffix == "monitor":
        # Not optional ('-' prefix): a monitor without its credentials file
        # must fail to start rather than come up without authentication.
        lines.append(f"EnvironmentFile={_systemd_escape(_monitor_env_file(spec))}")
    lines += [
        f"ExecStart={_exec_start(spec, program)}",
        "Restart=always",
        "RestartSec=2",
        "KillSignal=SIGTERM",
        # mixed: SIGTERM goes to the main process only, which runs the warm
        # shutdown and stops its own pool; a TERM to every pool child at once
        # (control-group) would abort running tasks.  The final SIGKILL still
        # goes to the whole cgroup, so nothing outlives the unit.
        "KillMode=mixed",
        f"TimeoutStopSec={stop_timeout(spec)}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _monitor_env_file(spec: DeploySpec) -> str:
    return spec.monitor_env_file or f"/etc/conveyor/{spec.name}-monitor.env"


def systemd_units(spec: DeploySpec) -> dict[str, str]:
    """Unit files by file name: one service per process and a target for them all.

    ``systemctl start NAME.target`` starts everything; stopping or restarting
    the target reaches every service through their ``PartOf=``.
    """
    _require_absolute(spec, "systemd")
    _require_user(spec, "systemd")
    units: dict[str, str] = {}
    for program in _programs(spec):
        name = f"{spec.name}-{program.suffix}.service"
        units[name] = _systemd_service(spec, name, program)
    target = [
        *_header(spec, "systemd"),
        "",
        "[Unit]",
        f"Description={_systemd_escape(f'Conveyor processes for {spec.app}')}",
        f"Wants={' '.join(units)}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    units[f"{spec.name}.target"] = "\n".join(target) + "\n"
    return units


# --- docker compose -------------------------------------------------------

_YamlValue: TypeAlias = (
    "str | int | float | bool | Sequence[_YamlValue] | Mapping[str, _YamlValue] | None"
)
_PLAIN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _compose_text(value: str) -> str:
    """Compose interpolates ``$`` in every string; double it to mean itself."""
    return value.replace("$", "$$")


def _yaml_scalar(value: _YamlValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid YAML double-quoted scalar, and quoting every
        # string keeps "yes", "7", "on" and "a: b" from turning into other types.
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"not a YAML scalar: {value!r}")


def _yaml_key(key: str) -> str:
    return key if _PLAIN_KEY_RE.fullmatch(key) else json.dumps(key)


def _yaml_lines(value: _YamlValue, indent: int = 0) -> list[str]:
    """Block-style YAML for the few types compose files need."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _is_collection(item) and item:
                lines.append(f"{pad}{_yaml_key(key)}:")
                lines += _yaml_lines(item, indent + 2)
            else:
                lines.append(f"{pad}{_yaml_key(key)}: {_yaml_inline(item)}")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for item in value:
            if _is_collection(item) and item:
                nested = _yaml_lines(item, indent + 2)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines += nested[1:]
            else:
                lines.append(f"{pad}- {_yaml_inline(item)}")
    else:
        lines.append(pad + _yaml_scalar(value))
    return lines


def _is_collection(value: _YamlValue) -> bool:
    """True for what needs block style: mappings and lists holding collections."""
    if isinstance(value, Mapping):
        return True
    return isinstance(value, (list, tuple)) and any(_is_collection(item) for item in value)


def _yaml_inline(value: _YamlValue) -> str:
    """Empty mappings, and lists of scalars, as flow style: ``[a, b]`` reads like argv."""
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(item) for item in value) + "]"
    return _yaml_scalar(value)


def _compose_services(spec: DeploySpec, image: str, broker_url: str) -> dict[str, _YamlValue]:
    # User --env items come last so they can override the broker URL.
    environment = {"CONVEYOR_BROKER_URL": _compose_text(broker_url)}
    for key, _ in secret_env(spec):  # environment: would win over env_file:
        environment.pop(key, None)
    environment.update({key: _compose_text(value) for key, value in public_env(spec)})
    services: dict[str, _YamlValue] = {
        "redis": {
            "image": "redis:7",
            # Every write reaches the disk before Redis answers: a broker that
            # forgets acknowledged enqueues on restart would lose tasks.
            "command": ["redis-server", "--appendonly", "yes", "--appendfsync", "always"],
            "volumes": ["redis-data:/data"],
            "healthcheck": {
                "test": ["CMD", "redis-cli", "ping"],
                "interval": "5s",
                "timeout": "3s",
                "retries": 5,
            },
            "restart": "unless-stopped",
        }
    }
    # Inside a container 127.0.0.1 is unreachable from the published port, so
    # the monitor listens on all container interfaces and the port is
    # published on the host's loopback only.
    for program in _programs(spec, monitor_address="0.0.0.0"):
        service: dict[str, _YamlValue] = {
            "image": _compose_text(image),
            # Exec form: conveyor is PID 1 and receives docker's SIGTERM itself.
            "command": [_compose_text(word) for word in ("conveyor", *program.args)],
            "environment": dict(environment),
            "depends_on": {"redis": {"condition": "service_healthy"}},
            "restart": "unless-stopped",
            "stop_signal": "SIGTERM",
            "stop_grace_period": f"{stop_timeout(spec)}s",
        }
        if spec.user:
            service["user"] = spec.user
        if secret_env(spec):
            service["env_file"] = [env_file_path(spec)]
        if program.suffix == "monitor":
            auth = spec.monitor_auth_env
            service["environment"] = {
                **environment,
                auth: f"${{{auth}:?set {auth} for the monitor, e.g. in .env}}",
            }
            service["ports"] = [f"127.0.0.1:{spec.monitor_port}:{spec.monitor_port}"]
        services[program.suffix] = service
    return services


def docker_compose(
    spec: DeploySpec,
    image: str = "myproject:latest",
    broker_url: str = "redis://redis:6379/0",
) -> str:
    """A ``compose.yaml`` with Redis, the workers, beat and the monitor.

    Host-side settings (``directory``, ``venv``, ``user``, ``log_dir``) do not
    apply: the image decides where the code is and who runs it, and logs go
    to stdout where ``docker compose logs`` finds them.
    """
    _require_user(spec, "compose")
    for label, text in (("image", image), ("broker_url", broker_url)):
        _check_text(label, text)
        if not text:
            raise DeployError(f"{label} must not be empty")
    notes = (["One beat service is generated; more replicas are safe (one leads under a "
              "lease, each tick is sent once) but only one does the work."]
             if spec.beat else [])
    notes += _auth_note(spec, "in the shell or in .env next to this file")
    document: dict[str, _YamlValue] = {
        "services": _compose_services(spec, image, broker_url),
        "volumes": {"redis-data": {}},
    }
    return "\n".join([*_header(spec, "compose", notes), "", *_yaml_lines(document)]) + "\n"
