"""``conveyor multi start|stop|restart|stopwait|kill|show|names``: Celery's multi, on ``--detach``.

The command line is Celery's (``celery/bin/multi.py``, ``celery/apps/multi.py``)::

    conveyor multi start w1 w2 -A proj -l INFO \\
        --pidfile=/var/run/conveyor/%n.pid --logfile=/var/log/conveyor/%n%I.log

``-A`` may also come before ``multi``, as in Celery's systemd guide
(``conveyor -A proj multi start w1 ...``).  Node names come first: ``w1``
(becomes ``w1@<host>``), ``w1@host``, or a count (``3`` is ``celery1`` to
``celery3``, as in Celery).  Everything after them is handed to ``conveyor
worker`` for each node, with ``-n NODE --detach`` and the node's expanded
``--pidfile``/``--logfile`` (Celery's defaults ``/var/run/celery/%n.pid``
and ``/var/log/celery/%n%I.log``, folders made when missing).  ``stop`` and
``kill`` find a node through its pidfile.  Celery's per-node options
(``-c:w1 4``) are refused by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import click

from conveyor._daemon import alive, node_format, read_pid

MAIN_OPTIONS = ("-A", "--app", "--workdir")  # go before the subcommand, as Celery moves them
DEFAULT_PIDFILE = "/var/run/celery/%n.pid"
DEFAULT_LOGFILE = "/var/log/celery/%n%I.log"
ACTIONS = ("start", "stop", "stopwait", "restart", "kill", "show", "names")


@dataclass(frozen=True)
class Node:
    """One worker of the set: its name and the command that starts it."""

    name: str
    argv: tuple[str, ...]
    pidfile: str

    def pid(self) -> int | None:
        try:
            return read_pid(self.pidfile)
        except click.ClickException:
            return None


def parse_nodes(words: list[str]) -> tuple[list[str], list[str]]:
    """Leading words that are not options are node names; the rest are worker options."""
    names: list[str] = []
    while words and not words[0].startswith("-"):
        names.append(words.pop(0))
    if len(names) == 1 and names[0].isdigit():
        names = [f"celery{i}" for i in range(1, int(names[0]) + 1)]
    if not names:
        raise click.UsageError("name the nodes: conveyor multi start w1 [w2 ...] -A proj ...")
    host = socket.gethostname()
    return [n if "@" in n else f"{n}@{host}" for n in names], words


def _take(words: list[str], names: tuple[str, ...]) -> str | None:
    """Remove ``--opt=value`` / ``--opt value`` from ``words``; the last value wins."""
    found = None
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, value = word.partition("=")
        if flag in names and eq:
            found = value
            del words[i]
        elif word in names and i + 1 < len(words):
            found = words[i + 1]
            del words[i:i + 2]
        else:
            i += 1
    return found


def build_nodes(words: list[str], app_spec: str | None = None) -> list[Node]:
    """The nodes and their commands; ``app_spec`` is a ``-A`` given before ``multi``
    (``conveyor -A proj multi start w1``, the form of Celery's systemd guide)."""
    names, options = parse_nodes(list(words))
    for word in options:
        if word.startswith("-") and ":" in word.partition("=")[0]:
            raise click.UsageError(f"{word}: per-node options (Celery's -opt:node form) are not "
                                   "supported; start such nodes with their own multi line")
    main: list[str] = []
    for flag in MAIN_OPTIONS:
        value = _take(options, (flag,))
        if value is not None:
            main += [flag, value]
    if app_spec and not {"-A", "--app"} & set(main):
        main = ["-A", app_spec, *main]
    pid_template = _take(options, ("--pidfile", "-p")) or DEFAULT_PIDFILE
    log_template = _take(options, ("--logfile", "-f")) or DEFAULT_LOGFILE
    _take(options, ("-n", "--hostname"))
    _take(options, ("--executable",))
    nodes = []
    for name in names:
        pidfile = os.path.abspath(node_format(pid_template, name))
        logfile = os.path.abspath(node_format(log_template, name))
        argv = (sys.executable, "-m", "conveyor", *main, "worker", *options, "-n", name,
                "--detach", f"--pidfile={pidfile}", f"--logfile={logfile}")
        nodes.append(Node(name, argv, pidfile))
    return nodes


@click.command("multi", context_settings={"ignore_unknown_options": True,
                                          "allow_interspersed_args": False})
@click.argument("action", type=click.Choice(ACTIONS))
@click.argument("words", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def multi_command(ctx: click.Context, action: str, words: tuple[str, ...]) -> None:
    """Start and stop several detached workers by node name, as Celery's multi."""
    nodes = build_nodes(list(words), getattr(ctx.obj, "spec", None))
    if action == "show":
        click.echo("\n".join(" ".join(node.argv) for node in nodes))
    elif action == "names":
        click.echo("\n".join(node.name for node in nodes))
    elif action == "start":
        raise SystemExit(start(nodes))
    elif action == "restart":
        stop(nodes, signal.SIGTERM, wait=True)
        raise SystemExit(start(nodes))
    else:
        sig = signal.SIGKILL if action == "kill" else signal.SIGTERM
        stop(nodes, sig, wait=action == "stopwait")


def start(nodes: list[Node]) -> int:
    """Start each node (each detaches and waits for its pidfile); 1 if any failed."""
    failed = 0
    for node in nodes:
        for path in (node.pidfile, node.argv[-1].partition("=")[2]):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        click.echo(f"> {node.name}: ", nl=False)
        done = subprocess.run(node.argv, capture_output=True, text=True, check=False)
        click.echo("OK" if done.returncode == 0 else f"FAILED\n{done.stderr.strip()}")
        failed += done.returncode != 0
    return 1 if failed else 0


def stop(nodes: list[Node], sig: int, wait: bool) -> None:
    """Signal every running node; with ``wait``, return once all are gone."""
    running = []
    for node in nodes:
        pid = node.pid()
        if pid is None or not alive(pid):
            click.echo(f"> {node.name}: not running")
            continue
        os.kill(pid, sig)
        click.echo(f"> {node.name}: sent {signal.Signals(sig).name} to {pid}")
        running.append((node, pid))
    while wait and running:
        running = [(node, pid) for node, pid in running if alive(pid)]
        if running:
            time.sleep(0.1)
    if wait:
        click.echo("> all stopped")
