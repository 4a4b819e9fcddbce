"""Pure parts of the daemon and multi commands: node-name paths and node lists.

Celery's forms (``celery/utils/nodenames.py``, ``celery/apps/multi.py``): ``%n``
is the name before ``@``, ``%h`` the host, ``%d`` its domain; ``multi start 3``
names ``celery1..celery3``; ``-A`` moves in front of the subcommand.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import pytest

from conveyor._daemon import (
    PidfileError,
    check_pidfile,
    drop_privileges,
    node_format,
    parse_umask,
)
from conveyor._multi_cli import build_nodes, parse_nodes


def test_node_format_expands_celerys_keys() -> None:
    assert node_format("/run/%n.pid", "w1@web.example.com") == "/run/w1.pid"
    assert node_format("%h|%d|%n%I%i.log", "w1@web.example.com") == (
        "web.example.com|example.com|w1.log")
    assert node_format("100%%-%x", "w1@h") == "100%-%x"  # unknown keys stay as written


def test_multi_node_names() -> None:
    names, rest = parse_nodes(["3", "-A", "proj"])
    assert [n.split("@")[0] for n in names] == ["celery1", "celery2", "celery3"]
    assert rest == ["-A", "proj"]
    assert parse_nodes(["w1@box", "-c", "2"])[0] == ["w1@box"]
    with pytest.raises(click.UsageError, match="name the nodes"):
        parse_nodes(["-A", "proj"])


def test_multi_builds_each_nodes_worker_command(tmp_path: Path) -> None:
    node = build_nodes(["w1@box", "-c", "2", "-A", "proj", f"--pidfile={tmp_path}/%n.pid",
                        "-f", f"{tmp_path}/%n%I.log"])[0]
    assert node.argv[:6] == (sys.executable, "-m", "conveyor", "-A", "proj", "worker")
    assert node.argv[6:] == ("-c", "2", "-n", "w1@box", "--detach",
                             f"--pidfile={tmp_path}/w1.pid", f"--logfile={tmp_path}/w1.log")
    assert node.pidfile == f"{tmp_path}/w1.pid"
    before = build_nodes(["w1", "-c", "2"], app_spec="proj")[0]  # conveyor -A proj multi ...
    assert before.argv[3:6] == ("-A", "proj", "worker")
    with pytest.raises(click.UsageError, match="-c:w1: per-node options"):
        build_nodes(["w1", "-c:w1", "4"])


def test_pidfile_checks(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    path.write_text(f"{os.getppid()}\n")  # our parent: alive
    with pytest.raises(PidfileError, match="which is running"):
        check_pidfile(str(path))
    path.write_text("garbage")
    with pytest.raises(PidfileError, match="garbled"):
        check_pidfile(str(path))


def test_umask_is_octal_with_a_leading_zero() -> None:
    assert parse_umask("022") == 0o22 and parse_umask("18") == 18 and parse_umask(None) is None
    with pytest.raises(click.BadParameter) as info:
        parse_umask("rw")
    assert "--umask" in info.value.format_message()


def test_uid_and_gid_name_what_is_wrong() -> None:
    with pytest.raises(click.BadParameter, match="no such user 'no-such-user-x'"):
        drop_privileges("no-such-user-x", None)
    with pytest.raises(click.BadParameter, match="no such group 'no-such-group-x'"):
        drop_privileges(None, "no-such-group-x")
    drop_privileges(str(os.getuid()), str(os.getgid()))  # already them: nothing changes
    assert (os.getuid(), os.getgid()) == (os.geteuid(), os.getegid())
