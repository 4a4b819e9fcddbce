"""A private ``redis-server`` that requires a password, for tests that need a real secret.

Started on its own free port and directory, so stopping it (to make every
client fail) touches nobody else's Redis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.processes import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(port: int, workdir: Path, password: str) -> subprocess.Popen[bytes]:
    """Start it and wait until it answers an authenticated PING."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1",
                             "--requirepass", password, "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    import redis

    client = redis.Redis(port=port, password=password)
    wait_for(lambda: _pings(client), 10, "the private Redis")
    client.close()
    return proc


def _pings(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False
