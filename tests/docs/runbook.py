"""Read a documentation page as a runbook: its marked code blocks, in order.

A page marks a fenced block for the docs tests with an HTML comment on the
line before it, which readers of the rendered page never see::

    <!-- docs-test: write invoices/tasks.py -->      the block is that file
    <!-- docs-test: append proj/settings.py -->      the block is added to it
    <!-- docs-test: sh -->                           each line is a command
    <!-- docs-test: expect [exit=N] TEXT -->         commands; the last one exits N (0)
                                                     showing TEXT (asked again for a while)
    <!-- docs-test: console -->                      ``$ command`` lines, each must succeed;
                                                     the first line shown after one is checked
    <!-- docs-test: background worker -->           the command keeps running
    <!-- docs-test: python -->                       a script, or a >>> session whose
                                                     shown outputs are checked
    <!-- docs-test: django-shell -->                 the same, in ``manage.py shell``
    <!-- docs-test: error-contains NAME=VALUE -->    that setting fails with the block's text
    <!-- docs-test: project getting-started.md -->   (no block) start from the project
                                                     that page builds

A command line ending in ``\\`` goes on on the next line, as in a shell.
Paths a page shows as placeholders (``/path/to/...``, see ``runner.py``) are
replaced by the real ones. Unmarked blocks are illustrations (other
brokers, systemd, placeholders) and are not run. Keeping the marks in the
page, beside the text, is what makes the page and the test unable to drift
apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_MARK = re.compile(r"^<!-- docs-test: (?P<action>[\w-]+)(?: (?P<arg>.*?))? -->$")
_FENCE = re.compile(r"^\s*```")
# Marks that stand for themselves and take no block.
BLOCKLESS = frozenset({"project"})


@dataclass(frozen=True)
class Step:
    """One marked block: what to do with it, its argument, and its text."""

    action: str
    arg: str
    body: str
    line: int  # where the mark is, for failure messages


def steps(page: Path) -> list[Step]:
    """The marked blocks of ``page``, in reading order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Step] = []
    for number, line in enumerate(lines):
        mark = _MARK.match(line.strip())
        if mark is None:
            continue
        if mark["action"] in BLOCKLESS:
            found.append(Step(mark["action"], mark["arg"] or "", "", number + 1))
            continue
        start = number + 1
        if start >= len(lines) or not _FENCE.match(lines[start]):
            raise ValueError(f"{page.name}:{number + 1}: a docs-test mark must precede a block")
        end = next(i for i in range(start + 1, len(lines)) if _FENCE.match(lines[i]))
        indent = len(lines[start]) - len(lines[start].lstrip())
        body = "\n".join(text[indent:] for text in lines[start + 1:end]) + "\n"
        found.append(Step(mark["action"], mark["arg"] or "", body, number + 1))
    return found


def commands(body: str) -> list[str]:
    """The command lines of a shell block, continuation lines joined, comments kept."""
    joined: list[str] = []
    pending = ""
    for line in body.splitlines():
        if not line.strip() and not pending:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    if pending:
        joined.append(pending)
    return joined


def is_session(body: str) -> bool:
    """A ``>>>`` transcript rather than a script."""
    return any(line.startswith(">>> ") for line in body.splitlines())


def shell_session(body: str) -> list[tuple[str, str]]:
    """Pairs of (statement, expected output) from a ``>>>`` transcript.

    ``...`` lines continue the statement above them, as at Python's prompt.
    """
    pairs: list[tuple[str, str]] = []
    for line in body.splitlines():
        if line.startswith(">>> "):
            pairs.append((line[4:], ""))
        elif (line.startswith("... ") or line == "...") and pairs and not pairs[-1][1]:
            statement, _ = pairs[-1]
            pairs[-1] = (statement + "\n" + line[4:], "")
        elif line.strip() and pairs:
            statement, output = pairs[-1]
            pairs[-1] = (statement, (output + "\n" + line).strip())
    return pairs


def console_session(body: str) -> list[tuple[str, list[str]]]:
    """Pairs of (command, lines shown after it) from a ``$ command`` transcript."""
    pairs: list[tuple[str, list[str]]] = []
    continued = False
    for line in body.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif continued and pairs:
            pairs[-1] = (pairs[-1][0] + " " + line.strip(), pairs[-1][1])
        elif line.strip() and pairs:
            pairs[-1][1].append(line)
        continued = line.rstrip().endswith("\\")
        if continued and pairs:
            pairs[-1] = (pairs[-1][0].rstrip()[:-1], pairs[-1][1])
    return pairs
