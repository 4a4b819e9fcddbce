"""The runbook reader: what a page's marks and blocks turn into (fast, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.runbook import commands, console_session, shell_session, steps
from tests.docs.runner import check_transcript, transcript_script


def test_marks_blocks_and_blockless_marks_in_reading_order(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- docs-test: project getting-started.md -->\n"
        "<!-- docs-test: expect exit=1 two words -->\n"
        "```sh\nfalse\n```\n"
        "  <!-- docs-test: write a.py -->\n"
        "  ```python\n  x = 1\n  ```\n"
        "```sh\nnot marked\n```\n"
    )
    found = [(s.action, s.arg, s.body) for s in steps(page)]
    assert found == [("project", "getting-started.md", ""),
                     ("expect", "exit=1 two words", "false\n"),
                     ("write", "a.py", "x = 1\n")]


def test_a_mark_without_a_block_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: sh -->\ntext\n")
    with pytest.raises(ValueError, match="must precede a block"):
        steps(page)


def test_shell_lines_continue_after_a_backslash() -> None:
    assert commands("a \\\n    --b\n\nc\n") == ["a      --b", "c"]


def test_python_transcript_continuation_and_outputs() -> None:
    body = ">>> f(1,\n...   2)\n(1, 2)\n>>> x = 3\n"
    assert shell_session(body) == [("f(1,\n  2)", "(1, 2)"), ("x = 3", "")]


def test_console_transcript_commands_and_shown_lines() -> None:
    body = "$ conveyor status\nworker  status\nw1  online\n$ curl -s \\\n     http://x/\n"
    assert console_session(body) == [("conveyor status", ["worker  status", "w1  online"]),
                                     ("curl -s  http://x/", [])]


def test_transcript_outputs_are_compared_in_order() -> None:
    script, expected = transcript_script(">>> 1 + 1  # a comment\n2\n")
    assert expected == ["2"]
    compile(script, "<page>", "exec")  # the comment does not swallow the closing brackets
    with pytest.raises(AssertionError, match="expected '3'"):
        check_transcript("--- docs-test output ---\n2\n", ["3"])
    check_transcript("--- docs-test output ---\n2\n", ["2"])


def test_every_page_uses_known_actions_only() -> None:
    """A mistyped mark fails here in a second, not minutes into the slow run."""
    from tests.docs.runner import ACTIONS
    from tests.docs.test_pages import PAGES

    used = {(page.name, step.line, step.action) for page in PAGES for step in steps(page)}
    assert used
    assert [mark for mark in used if mark[2] not in ACTIONS] == []
