"""docs/getting-started.md, run as a newcomer would: from a built wheel in a
fresh virtualenv, every marked step in order (startproject, the app module,
settings, a model, migrations, tasks, a worker process, a call from
Django's shell, beat sending a periodic task, the monitor answering with
the account from the environment, the page's own pytest test).

When this fails, the page and the code have drifted apart: fix whichever is
wrong, never the test's copy of the page (there is none: it reads the page).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.runbook import Step, shell_session, steps

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "getting-started.md"
pytestmark = pytest.mark.slow


def _run(cmd: list[str] | str, cwd: Path, env: dict[str, str], timeout: float = 300,
         check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, shell=isinstance(cmd, str), text=True,
                          capture_output=True, timeout=timeout, input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and sdist `make dist` builds (built here into a temporary folder)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], ROOT,
         dict(os.environ))
    assert list(out.glob("conveyor-*.tar.gz")), "no sdist was built"
    (built,) = out.glob("conveyor-*.whl")
    return built


@pytest.fixture(scope="module")
def env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh virtualenv with the wheel installed as the page says, and its PATH."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(venv)], venv, dict(os.environ))
    requirement = f"conveyor[django,monitor] @ {wheel.as_uri()}"
    _run([str(venv / "bin" / "pip"), "install", "-q", requirement, "pytest", "pytest-django"],
         venv, dict(os.environ), timeout=600)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("CONVEYOR_", "DJANGO_", "PYTHON", "VIRTUAL_ENV"))}
    clean["PATH"] = f"{venv / 'bin'}{os.pathsep}{clean.get('PATH', '')}"
    return clean


# What each background program prints once it is up.
_STARTED = {"worker": "ready", "beat": "starting", "monitor": "conveyor monitor on"}


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} from the worker:\n{path.read_text(errors='replace')}")


def _django_shell(step: Step, project: Path, env: dict[str, str]) -> None:
    """Run a >>> transcript through `manage.py shell` and compare every shown output."""
    lines, expected = [], []
    for statement, output in shell_session(step.body):
        if output:
            lines.append(f"print(repr({statement}))")
            expected.append(output)
        else:
            lines.append(statement)
    proc = _run(["python", "manage.py", "shell", "-c",
                 "\n".join(lines)], project, env, timeout=60)
    assert proc.stdout.split("\n")[-len(expected) - 1:-1] == expected, proc.stdout


def _error_contains(step: Step, project: Path, env: dict[str, str]) -> None:
    """A mistyped setting stops Django with the message the page quotes."""
    name, _, value = step.arg.partition("=")
    settings = project / "proj" / "settings.py"
    original = settings.read_text()
    settings.write_text(original + f"\n{name} = {value}\n")
    try:
        proc = _run(["python", "manage.py", "check"], project, env, check=False, timeout=60)
    finally:
        settings.write_text(original)
    assert proc.returncode != 0
    assert step.body.strip() in proc.stderr, proc.stderr


def test_getting_started_page_runs_as_written(env: dict[str, str], tmp_path: Path,
                                               workers: list[subprocess.Popen[str]]) -> None:
    project = tmp_path / "site"
    project.mkdir()
    for step in steps(PAGE):
        where = f"getting-started.md:{step.line}"
        if step.action == "sh":
            for command in step.body.strip().splitlines():
                _run(command, project, env)
        elif step.action in ("write", "append"):
            target = project / step.arg
            before = target.read_text() if step.action == "append" else ""
            target.write_text(before + step.body)
        elif step.action == "background":
            log = tmp_path / f"{step.arg}.log"
            out = log.open("w")
            workers.append(subprocess.Popen(step.body.strip(), shell=True, cwd=project, env=env,
                                            stdout=out, stderr=subprocess.STDOUT, text=True))
            _wait_for(log, _STARTED[step.arg], workers[-1])
        elif step.action == "django-shell":
            _django_shell(step, project, env)
        elif step.action == "error-contains":
            _error_contains(step, project, env)
        else:
            raise AssertionError(f"{where}: unknown docs-test action {step.action!r}")
    assert len(steps(PAGE)) >= 10, "the page lost its runnable steps"
