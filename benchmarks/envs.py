"""One virtualenv per system, built on first use from pinned requirements.

Each system's requirements live on its adapter (``System.requirements``).  A
venv is rebuilt when its requirement list changes (a stamp file holds the
list it was built from), so ``make bench`` on a fresh machine builds them all
and later runs reuse them.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENVS = HERE / ".envs"


def venv_dir(name: str) -> Path:
    return ENVS / name


def python_of(name: str) -> Path:
    return venv_dir(name) / "bin" / "python"


def _stamp_text(requirements: list[str]) -> str:
    text = "\n".join(requirements)
    return text + "\n# " + hashlib.sha256(text.encode()).hexdigest()[:12] + "\n"


def ensure_venv(name: str, requirements: list[str], base_python: str | None = None,
                log: bool = True) -> Path:
    """Create ``benchmarks/.envs/<name>`` with ``requirements``; return its python."""
    target = venv_dir(name)
    stamp = target / ".bench-requirements"
    wanted = _stamp_text(requirements)
    if stamp.exists() and stamp.read_text() == wanted and python_of(name).exists():
        return python_of(name)
    if log:
        print(f"[env] building {target.relative_to(ROOT)}: {' '.join(requirements)}",
              flush=True)
    python = base_python or os.environ.get("BENCH_PYTHON") or _base_python()
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "venv", "--clear", str(target)], check=True)
    pip = [str(python_of(name)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, capture_output=True)
    args = [part for req in requirements for part in shlex.split(req)]
    done = subprocess.run([*pip, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip install failed for {name}:\n{done.stdout}{done.stderr}")
    stamp.write_text(wanted)
    return python_of(name)


def compile_sources(python: Path) -> None:
    """Write bytecode for the sources workers import from this tree.

    Conveyor is installed editable and every system's benchmark app is
    imported from ``benchmarks/``; pip wrote bytecode for everything it
    installed, but these are compiled on import, and on a machine that sets
    ``PYTHONDONTWRITEBYTECODE`` (this one does) every worker start compiled
    Conveyor's ~200 modules again: ~0.2 s of start-up inside the timed
    processing run, and the compiler's garbage in the measured RSS.
    """
    skip = r"[/\\](\.envs|results)[/\\]"
    subprocess.run([str(python), "-m", "compileall", "-q", "-j", "0", "-x", skip,
                    str(ROOT / "conveyor"), str(ROOT / "benchmarks")], check=True)


def _base_python() -> str:
    """The interpreter the venvs are made from: the one that is not a venv."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if os.path.exists(base) else "python3"


def installed_versions(name: str, packages: list[str]) -> dict[str, str]:
    """``{package: version}`` as installed in the venv (for the report)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    import json

    done = subprocess.run([str(python_of(name)), "-c", code, *packages],
                          capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))
