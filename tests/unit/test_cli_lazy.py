"""The ``conveyor`` command group imports its other commands only when they are named.

A worker (and every prefork child forked from it) then carries none of their
modules: about 2 MiB of resident memory per process (docs/performance.md,
"Round two").
"""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from conveyor._cli import _LAZY_COMMANDS, all_commands, main

_OTHERS = ("conveyor._multi_cli", "conveyor._ops_cli", "conveyor._deploy", "conveyor.monitor.cli",
           "conveyor.control.cli", "conveyor.migrate.cli", "conveyor._tools_cli",
           "conveyor.beat.cli", "conveyor._db_cli")


def test_loading_the_cli_for_a_worker_imports_no_other_command() -> None:
    code = ("import sys, conveyor._cli as c; c.main.get_command(None, 'worker'); "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert "conveyor._cli" in out and "click" in out
    assert [name for name in _OTHERS if name in out] == []


def test_every_lazy_command_loads_under_its_own_name() -> None:
    commands = all_commands()
    for name in _LAZY_COMMANDS:
        assert isinstance(commands[name], click.Command) and commands[name].name == name


def test_help_lists_every_command_and_a_lazy_one_runs() -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["--help"])
    assert listed.exit_code == 0
    for name in (*_LAZY_COMMANDS, "worker", "call", "queues"):
        assert f"  {name} " in listed.output
    multi = runner.invoke(main, ["multi", "--help"])
    assert multi.exit_code == 0 and "node" in multi.output.lower()
