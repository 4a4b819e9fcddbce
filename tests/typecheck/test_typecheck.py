"""Type checkers follow a task's signature: the errors they must report, and no false ones.

``project/`` is a small typed project.  ``tasks.py`` declares tasks the ways
real projects do (``@app.task`` with and without options, ``bind=True``,
``async def``, ``@shared_task``, a ``base=`` class overriding ``__call__``,
a class-based task); ``uses_ok.py`` uses them correctly, including the
chain idiom ``add.s(3)`` whose first argument is the previous result
(Celery's partial signatures: docs.celeryq.dev "Canvas: Partials"), and
pins the result types with ``assert_type``; ``uses_wrong.py`` marks each
line a checker must report with ``# E: <mypy error codes>``.

Both checkers run in strict mode over a copy of the project, so the
assertions are exact both ways: every marked line reported, nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import conveyor

PROJECT = Path(__file__).parent / "project"
REPO = Path(conveyor.__file__).resolve().parents[1]
FILES = ["tasks.py", "uses_ok.py", "uses_wrong.py"]
MARK = re.compile(r"#\s*E:\s*(?P<codes>[\w\- ]+)$")


def expected_errors() -> dict[int, set[str]]:
    """Line number -> the mypy codes marked on it in ``uses_wrong.py``."""
    found: dict[int, set[str]] = {}
    lines = (PROJECT / "uses_wrong.py").read_text().splitlines()
    for number, line in enumerate(lines, 1):
        match = MARK.search(line)
        if match:
            found[number] = set(match["codes"].split())
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy outside the repository, so the files are top-level modules there."""
    copy = tmp_path / "project"
    shutil.copytree(PROJECT, copy)
    return copy


def test_the_wrong_file_marks_the_cases_the_issue_names() -> None:
    """The fixture itself: keyword of the wrong type, missing argument, wrong ``.s()``."""
    marked = expected_errors()
    codes = set().union(*marked.values())
    assert {"arg-type", "call-arg", "call-overload", "assignment"} <= codes
    assert len(marked) >= 15


def test_mypy_reports_exactly_the_marked_lines(project: Path) -> None:
    config = project / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = true\npython_version = 3.11\n"
        f"mypy_path = {REPO}\n\n"
        # Conveyor's own code is checked by the project's run, not here.
        "[mypy-conveyor.*]\nfollow_imports = silent\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config),
         "--cache-dir", str(project / ".cache"), "--no-pretty", "--show-error-codes", *FILES],
        cwd=project, capture_output=True, text=True, timeout=300,
    )
    reported: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for line in run.stdout.splitlines():
        match = re.match(r"^(?P<file>[\w.]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$", line)
        if match:
            reported[match["file"]][int(match["line"])].add(match["code"])
    assert run.returncode in (0, 1), run.stdout + run.stderr  # 2: mypy itself failed
    assert dict(reported.get("tasks.py", {})) == {}, run.stdout
    assert dict(reported.get("uses_ok.py", {})) == {}, run.stdout
    assert dict(reported["uses_wrong.py"]) == expected_errors(), run.stdout


def _pyright() -> str:
    """The pyright command, or a skip when it is not installed or cannot start.

    pyright is a Node program; its PyPI wrapper needs a ``node`` (or a
    download of one) before it can run.
    """
    found = shutil.which("pyright", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                          os.environ.get("PATH", "")]))
    if found is None:
        pytest.skip("pyright is not installed (pip install pyright)")
    try:
        probe = subprocess.run([found, "--version"], capture_output=True, text=True,
                               timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("pyright did not start within 300 s (no node, no download)")
    if probe.returncode != 0:
        pytest.skip(f"pyright cannot run here: {probe.stderr.strip()[:200]}")
    return found


def test_pyright_reports_exactly_the_marked_lines(project: Path) -> None:
    """Same lines as mypy (pyright names its rules differently, so lines are compared)."""
    pyright = _pyright()
    (project / "pyrightconfig.json").write_text(json.dumps({
        "typeCheckingMode": "strict",
        "pythonVersion": "3.11",
        "extraPaths": [str(REPO)],
    }))
    run = subprocess.run(
        [pyright, "--outputjson", "--pythonpath", sys.executable, *FILES],
        cwd=project, capture_output=True, text=True, timeout=300,
    )
    report = json.loads(run.stdout)
    reported: dict[str, set[int]] = defaultdict(set)
    for diagnostic in report["generalDiagnostics"]:
        if diagnostic["severity"] == "error":
            # pyright counts lines from 0
            reported[Path(diagnostic["file"]).name].add(diagnostic["range"]["start"]["line"] + 1)
    assert reported.get("tasks.py", set()) == set(), run.stdout
    assert reported.get("uses_ok.py", set()) == set(), run.stdout
    assert reported["uses_wrong.py"] == set(expected_errors()), run.stdout
