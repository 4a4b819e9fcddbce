"""Command lines in deployment files: ``celery ...`` becomes ``conveyor ...``.

Supervisor programs, systemd units, Procfiles, Dockerfiles, compose files
and shell scripts start Celery with the same few shapes: a ``celery``
executable (perhaps with a path), ``python -m celery``, or a JSON array
(``CMD ["celery", "-A", ...]``). Each is rewritten where it stands, and its
flags are then checked against Conveyor's own command line (read from the
click commands, so the check follows the CLI as it grows): a flag or
subcommand Conveyor does not accept is reported with its line, never
dropped silently.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from conveyor.migrate.report import Report

_SUBCOMMANDS = (r"(?:-A|--app|-b|--broker|--workdir|worker|beat|flower|inspect|control|purge|"
                r"multi|status|events|call|result|shell|report|amqp|upgrade|graph|list|logtool|"
                r"migrate)\b")
_SHELL = re.compile(r"(?P<lead>^|[\s\"'=;&|(])(?P<path>(?:[\w.~$/{}-]*/)?)celery(?=\s+"
                    + _SUBCOMMANDS + ")")
_MODULE = re.compile(r"-m\s+celery\b")
_ARRAY = re.compile(r"([\"'])celery\1(?=\s*,\s*[\"']" + _SUBCOMMANDS + ")")
_AFTER = re.compile(r"conveyor\b(.*)$")

# Celery subcommands with another name here.
_RENAMED_SUBCOMMANDS = {"flower": "monitor"}


def rewrite_commands(path: Path, text: str, report: Report) -> str:
    """``text`` with every Celery command line rewritten and checked."""
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        new = _SHELL.sub(lambda m: f"{m['lead']}{m['path']}conveyor", line)
        new = _MODULE.sub("-m conveyor", new)
        new = _ARRAY.sub(lambda m: f"{m[1]}conveyor{m[1]}", new)
        if new != line:
            new = _rename_subcommands(new)
            _check(path, number, new, report)
            lines[number - 1] = new
    return "".join(lines)


def _rename_subcommands(line: str) -> str:
    for old, new in _RENAMED_SUBCOMMANDS.items():
        line = re.sub(rf"(conveyor\b.*?[\s\"',])({old})\b", rf"\g<1>{new}", line, count=1)
    return line


def _words(line: str) -> list[str]:
    """The words after ``conveyor`` on this line (JSON arrays read as words)."""
    found = _AFTER.search(line)
    if found is None:
        return []
    rest = re.sub(r"[\[\]\",]", " ", found[1]) if "[" in line else found[1]
    try:
        return shlex.split(rest, comments=True)
    except ValueError:
        return rest.split()


def _check(path: Path, number: int, line: str, report: Report) -> None:
    from conveyor._cli import all_commands, main

    words = _words(line)
    accepted = _options(main)
    for i, word in enumerate(words):
        if word.startswith("-"):
            if _flag(word) not in accepted:
                report.note(path, number, f"option {word} is not accepted by conveyor")
            continue
        if i > 0 and words[i - 1] in ("-A", "--app", "--workdir", "-b", "--broker"):
            continue
        command = all_commands().get(word)
        if command is None:
            report.note(path, number, f"conveyor has no '{word}' command; "
                                      "see docs/migrating-from-celery.md")
            return
        _check_options(path, number, word, command, words[i + 1:], report)
        return


def _check_options(path: Path, number: int, name: str, command: click.Command,
                   words: list[str], report: Report) -> None:
    accepted = _options(command)
    if name == "multi":  # multi hands its options to each node's worker command
        from conveyor._cli import all_commands, main

        accepted |= _options(main) | _options(all_commands()["worker"])
        words = [w for w in words if w.partition("=")[0] not in ("-p",)]
    if isinstance(command, click.Group):
        sub = next((w for w in words if not w.startswith("-")), None)
        if sub is not None and sub in command.commands:
            accepted |= _options(command.commands[sub])
        elif sub is not None:
            report.note(path, number, f"conveyor {name} has no '{sub}' subcommand")
    for word in words:
        if word.startswith("-") and _flag(word) not in accepted:
            report.note(path, number, f"option {word} is not accepted by conveyor {name}")


def _options(command: click.Command) -> set[str]:
    names = {"-h", "--help"}
    for param in command.params:
        names.update(getattr(param, "opts", ()))
        names.update(getattr(param, "secondary_opts", ()))
    return names


def _flag(word: str) -> str:
    """``--port=5555`` -> ``--port``; ``-Ofair`` -> ``-O``; ``-c4`` -> ``-c``."""
    if word.startswith("--"):
        return word.split("=", 1)[0]
    return word[:2]
