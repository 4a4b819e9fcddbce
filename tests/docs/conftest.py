"""What every docs test shares: one built wheel, one virtualenv with it installed
(built once per run, even across xdist workers, under a file lock), and the
projects pages start from (``<!-- docs-test: project PAGE -->``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs.runner import DOCS, ROOT, Runner, run

# Installed beside the wheel: what pages tell readers to `pip install` for their
# own tests and for trying the generated Supervisor config.
_TOOLS = ("pytest", "pytest-django", "supervisor")


@dataclass(frozen=True)
class DocsEnv:
    wheel: Path
    env: dict[str, str]

    def substitutions(self) -> dict[str, str]:
        """Placeholders pages show, and what they stand for here."""
        folder = f"{self.wheel.parent}/"
        shown = {"/path/to/checkout/dist/": folder, "/path/to/": folder}
        # The monitor's port, where 5555 is taken (another checkout's tests, say).
        port = os.environ.get("CONVEYOR_TEST_MONITOR_PORT")
        if port:
            shown.update({"--port 5555": f"--port {port}", ":5555/": f":{port}/"})
        return shown

    def runner(self, project: Path, logs: Path,
               projects: Callable[[str], Path] | None = None) -> Runner:
        return Runner(project, self.env, logs, self.substitutions(), projects)


def _shared_root(factory: pytest.TempPathFactory) -> Path:
    """A folder every xdist worker of this run sees (the run's base temp)."""
    base = factory.getbasetemp()
    return base.parent if base.name.startswith("popen-gw") else base


def _build(folder: Path) -> DocsEnv:
    """Build the wheel and install it as a reader would, from a shell of their own.

    Not from this run's environment: the build leaves ``conveyor.egg-info`` in
    the checkout, so with ``PYTHONPATH`` naming the checkout pip would find
    conveyor "already satisfied" there and leave it out of the virtualenv,
    whose commands (run without ``PYTHONPATH``) then could not import it.
    """
    dist, venv = folder / "dist", folder / "venv"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], ROOT, _shell_env())
    assert list(dist.glob("conveyor-*.tar.gz")), "no sdist was built"
    (wheel,) = dist.glob("conveyor-*.whl")
    run([sys.executable, "-m", "venv", str(venv)], folder, _shell_env())
    env = _clean_env(venv)
    requirement = f"conveyor[django,monitor] @ {wheel.as_uri()}"
    run([str(venv / "bin" / "pip"), "install", "-q", requirement, *_TOOLS], folder, env,
        timeout=600)
    return DocsEnv(wheel, env)


def _shell_env() -> dict[str, str]:
    """The environment of a new user's shell: none of this run's settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("CONVEYOR_", "DJANGO_", "PYTHON", "VIRTUAL_ENV", "PYTEST_"))}


def _clean_env(venv: Path) -> dict[str, str]:
    """A new user's shell with the virtualenv active."""
    clean = _shell_env()
    clean["PATH"] = f"{venv / 'bin'}{os.pathsep}{clean.get('PATH', '')}"
    clean["VIRTUAL_ENV"] = str(venv)
    return clean


@pytest.fixture(scope="session")
def docs_env(tmp_path_factory: pytest.TempPathFactory) -> DocsEnv:
    """The wheel `make dist` builds, installed as the pages say into a fresh venv."""
    root = _shared_root(tmp_path_factory)
    folder = root / "docs-env"
    with (root / "docs-env.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "ready").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            _build(folder)
            (folder / "ready").touch()
    (wheel,) = (folder / "dist").glob("conveyor-*.whl")
    return DocsEnv(wheel, _clean_env(folder / "venv"))


@pytest.fixture(scope="session")
def projects(docs_env: DocsEnv,
             tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``projects("getting-started.md")``: the project that page builds (its files,
    and its commands before it starts a program), built once and copied from."""
    built: dict[str, Path] = {}

    def project(page: str) -> Path:
        if page not in built:
            folder = tmp_path_factory.mktemp(f"project-{page}")
            logs = tmp_path_factory.mktemp("logs")
            docs_env.runner(folder, logs, project).run_page(DOCS / page, build_only=True)
            built[page] = folder
        return built[page]

    return project


@pytest.fixture
def page_runner(docs_env: DocsEnv, projects: Callable[[str], Path],
                tmp_path: Path) -> Iterator[Runner]:
    """A runner in an empty folder (the reader's), which stops what the page started."""
    project, logs = tmp_path / "site", tmp_path / "logs"
    project.mkdir()
    logs.mkdir()
    runner = docs_env.runner(project, logs, projects)
    try:
        yield runner
    finally:
        runner.close()
