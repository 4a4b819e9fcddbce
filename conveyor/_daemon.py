"""Running ``worker`` and ``beat`` as daemons: ``-D/--detach``, ``--pidfile``, ``--logfile``.

The shape follows Celery's ``celery.platforms`` (read, not copied): the
pidfile is checked before detaching so a live one is refused on the
terminal that asked; the daemon itself (double fork, new session, working
directory kept, umask set when asked, stdin from /dev/null, stdout and
stderr into the logfile or /dev/null) writes the pidfile, and removes it
when it exits.  One difference on purpose: the command that detaches waits
until the daemon has written its pidfile (or died) and says which, so
``conveyor multi start`` and init scripts learn of a failed start at once.

Node-name forms in paths are Celery's: ``%n`` the name before ``@``,
``%h`` the full node name's host part, ``%d`` its domain; ``%i`` and ``%I``
(Celery's pool-process index) are empty here because a worker's children
write to their parent's log.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

READY_TIMEOUT = 60.0  # seconds the detaching command waits for the daemon's pidfile


class PidfileError(click.ClickException):
    """A live process holds the pidfile, or it cannot be written."""


def node_format(template: str, nodename: str) -> str:
    """Expand Celery's ``%n %h %d %i %I`` in a path for node ``name@host``."""
    name, _, host = nodename.rpartition("@")
    host = host or socket.gethostname()
    name = name or host.partition(".")[0]
    keys = {"n": name, "h": host, "d": host.partition(".")[2], "i": "", "I": "", "%": "%"}
    out, i = [], 0
    while i < len(template):
        char = template[i]
        if char == "%" and i + 1 < len(template) and template[i + 1] in keys:
            out.append(keys[template[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def read_pid(path: str) -> int | None:
    """The pid in ``path``; None if there is no file. A garbled file is an error."""
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text.splitlines()[0])
    except (ValueError, IndexError) as exc:
        raise PidfileError(f"pidfile {path} is garbled ({text[:20]!r}); remove it") from exc


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def check_pidfile(path: str) -> None:
    """Refuse a pidfile whose process lives; remove a stale one (its process is gone)."""
    pid = read_pid(path)
    if pid is None:
        return
    if pid != os.getpid() and alive(pid):
        raise PidfileError(f"pidfile {path} holds pid {pid}, which is running: "
                           "is this node already started?")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_pidfile(path: str) -> None:
    """Write our pid (exclusively) and remove the file when this process exits."""
    check_pidfile(path)
    pid = os.getpid()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError as exc:
        raise PidfileError(f"pidfile {path} was created by another process meanwhile") from exc
    except OSError as exc:
        raise PidfileError(f"cannot write pidfile {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{pid}\n")
    atexit.register(_release, path, pid)
    # Until the worker or beat installs its own handler: exit through atexit, so a
    # SIGTERM during start-up still removes the pidfile.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _release(path: str, pid: int) -> None:
    """Remove the pidfile if it is still ours (forked children inherit atexit hooks)."""
    if os.getpid() != pid:
        return
    with contextlib.suppress(OSError, PidfileError):
        if read_pid(path) == pid:
            os.unlink(path)


def check_logfile(path: str) -> None:
    """Celery touches the logfile before detaching: errors after it would be lost."""
    try:
        open(path, "a").close()  # only proving we may write
    except OSError as exc:
        raise click.ClickException(f"cannot write logfile {path}: {exc.strerror}") from exc


def redirect_output(logfile: str | None) -> None:
    """stdout and stderr (file descriptors, so children and C code follow) into ``logfile``."""
    if not logfile:
        return
    fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def drop_privileges(uid: str | None, gid: str | None) -> None:
    """Celery's ``--uid``/``--gid``: a name or number; the group first, then the user."""
    if not uid and not gid:
        return
    user = _user(uid) if uid else None
    group = _group(gid) if gid else (user.pw_gid if user else None)
    try:
        if group is not None and group != os.getgid():
            os.setgid(group)
        if user is not None and user.pw_uid != os.getuid():
            os.initgroups(user.pw_name, group if group is not None else user.pw_gid)
            os.setuid(user.pw_uid)
    except PermissionError as exc:
        raise click.ClickException(f"--uid/--gid: cannot change user or group ({exc.strerror}); "
                                   "start as root to drop privileges") from exc


def _user(value: str) -> Any:
    try:
        return pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except KeyError as exc:
        raise click.BadParameter(f"no such user {value!r}", param_hint="--uid") from exc


def _group(value: str) -> int:
    try:
        return int(value) if value.isdigit() else grp.getgrnam(value).gr_gid
    except KeyError as exc:
        raise click.BadParameter(f"no such group {value!r}", param_hint="--gid") from exc


def parse_umask(value: str | None) -> int | None:
    """Celery reads ``--umask`` as octal when it starts with 0, else decimal."""
    if value is None:
        return None
    try:
        return int(value, 8 if value.startswith("0") else 10)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a number", param_hint="--umask") from exc


def detach(logfile: str | None, pidfile: str | None, umask: int | None) -> None:
    """Become a daemon; only the daemon returns.  The caller exits with its status."""
    if pidfile:
        check_pidfile(pidfile)
    if logfile:
        check_logfile(logfile)
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        os._exit(_await_daemon(read_end, pidfile, logfile))
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    if umask is not None:
        os.umask(umask)
    _detach_streams(logfile)
    started = b""
    try:
        if pidfile:
            write_pidfile(pidfile)
        started = f"{os.getpid()}\n".encode()
    finally:
        os.write(write_end, started)  # empty: the parent reports a failed start
        os.close(write_end)


def _detach_streams(logfile: str | None) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)
    redirect_output(logfile)


def _await_daemon(read_end: int, pidfile: str | None, logfile: str | None) -> int:
    """In the first parent: report the daemon's pid, or that it failed to start."""
    import select

    ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT)
    data = os.read(read_end, 64).decode().strip() if ready else ""
    if data:
        where = f"pidfile {pidfile}" if pidfile else "no pidfile"
        click.echo(f"detached: pid {data} ({where})")
        return 0
    hint = f"; see {logfile}" if logfile else "; rerun without -D to see why"
    click.echo(f"the daemon did not start{hint}", err=True)
    return 1


def daemon_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Celery's daemon options (``CeleryDaemonCommand``), for ``worker`` and ``beat``."""
    options = [
        click.option("-D", "--detach", is_flag=True, help="run in the background as a daemon"),
        click.option("-f", "--logfile", default=None,
                     help="log here instead of stderr (%n %h %d expand as Celery's)"),
        click.option("--pidfile", default=None,
                     help="write the pid here; a live one refuses to start, a stale one "
                          "is replaced"),
        click.option("--uid", default=None, help="drop privileges to this user (name or id)"),
        click.option("--gid", default=None, help="drop privileges to this group (name or id)"),
        click.option("--umask", default=None, help="umask of the daemon (octal with a leading 0)"),
        click.option("--executable", default=None,
                     help="accepted for Celery's multi; the daemon forks, it does not re-exec"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def daemonize(flags: dict[str, Any], nodename: str) -> str | None:
    """Apply the daemon options popped from ``flags``; the logfile to use, if any.

    Order as Celery's: privileges dropped first, then the pidfile checked,
    then detached (when asked), then the pidfile written by the process that
    will run.
    """
    detach_ = flags.pop("detach")
    logfile = flags.pop("logfile")
    pidfile = flags.pop("pidfile")
    umask = parse_umask(flags.pop("umask"))
    flags.pop("executable")
    drop_privileges(flags.pop("uid"), flags.pop("gid"))
    logfile = os.path.abspath(node_format(logfile, nodename)) if logfile else None
    pidfile = os.path.abspath(node_format(pidfile, nodename)) if pidfile else None
    if detach_:
        detach(logfile, pidfile, umask)
        return logfile
    if umask is not None:
        os.umask(umask)
    if pidfile:
        write_pidfile(pidfile)
    if logfile:
        check_logfile(logfile)
        redirect_output(logfile)
    return logfile
