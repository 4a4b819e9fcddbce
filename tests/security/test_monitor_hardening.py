"""The monitor as a careless operator or an attacker meets it (issue 15, finding 7).

Every test runs ``conveyor monitor`` as a real process (uvicorn, as deployed)
and talks to it over TCP: credentials from the environment or a file, a
warning for passwords on the command line, failed logins throttled per
client address, slow headers and stalled bodies cut off, TLS with a
certificate made here, and a single-sign-on proxy's user header believed
only from the proxy's address.

Celery: Flower (the monitor Celery users run) takes ``--basic-auth`` on the
command line, ``--certfile``/``--keyfile`` for TLS, and trusts proxy headers
with ``--xheaders``; it has no login throttling or header timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.processes import stop, wait_for
from tests.security.private_redis import free_port
from tests.tls import self_signed

ADMIN = ("boss", "adm-pw-5")
VIEWER = ("viewer", "view-pw-5")
ACT = {"X-Conveyor-Action": "1"}


class Monitor:
    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = root / f"monitor-{self.port}.log"
        (root / "monapp.py").write_text(
            "from conveyor import Conveyor\n"
            f"app = Conveyor('monapp', broker='sqlite:///{root / 'b.db'}')\n")
        full_env = dict(os.environ, PYTHONPATH=str(root), **(env or {}))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "-A", "monapp", "monitor", "--port",
                 str(self.port), *args], cwd=root, env=full_env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._listening, 30, "the monitor to listen")

    def _listening(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, source: str = "127.0.0.1", scheme: str = "http",
               verify: ssl.SSLContext | bool = True) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source, verify=verify)
        return httpx.Client(base_url=f"{scheme}://127.0.0.1:{self.port}", transport=transport,
                            timeout=10)


@pytest.fixture
def monitors(tmp_path: Path) -> Iterator[list[Monitor]]:
    started: list[Monitor] = []
    yield started
    for monitor in started:
        stop(monitor.proc, signal.SIGTERM, timeout=15)


def test_credentials_from_a_file_or_the_environment_and_no_warning(
        tmp_path: Path, monitors: list[Monitor]) -> None:
    users = tmp_path / "users"
    users.write_text(f"# admins\n{ADMIN[0]}:{ADMIN[1]}\n")
    viewers = tmp_path / "viewers"
    viewers.write_text(f"{VIEWER[0]}:{VIEWER[1]}\n")
    from_file = Monitor(tmp_path, "--basic-auth-file", str(users), "--readonly-auth-file",
                        str(viewers))
    from_env = Monitor(tmp_path, env={"CONVEYOR_MONITOR_BASIC_AUTH": f"{ADMIN[0]}:{ADMIN[1]}"})
    monitors += [from_file, from_env]
    for monitor in monitors:
        with monitor.client() as client:
            assert client.get("/api/me", auth=ADMIN).json() == {"user": ADMIN[0],
                                                                 "role": "admin"}
            assert client.get("/api/me", auth=("boss", "wrong")).status_code == 401
        assert "warning" not in monitor.output()
    with from_file.client() as client:
        assert client.get("/api/me", auth=VIEWER).json()["role"] == "readonly"


def test_a_password_on_the_command_line_is_warned_about(tmp_path: Path,
                                                        monitors: list[Monitor]) -> None:
    monitor = Monitor(tmp_path, "--basic-auth", f"{ADMIN[0]}:{ADMIN[1]}")
    monitors.append(monitor)
    out = monitor.output()
    assert "warning: --basic-auth put passwords on the command line" in out
    assert "--basic-auth-env" in out and "--basic-auth-file" in out


def test_failed_logins_are_throttled_per_client(tmp_path: Path, monitors: list[Monitor]) -> None:
    monitor = Monitor(tmp_path, "--login-attempts", "3",
                      env={"CONVEYOR_MONITOR_BASIC_AUTH": f"{ADMIN[0]}:{ADMIN[1]}"})
    monitors.append(monitor)
    with monitor.client() as attacker, monitor.client("127.0.0.2") as neighbour:
        statuses = [attacker.get("/api/me", auth=("boss", f"guess{i}")).status_code
                    for i in range(3)]
        assert statuses == [401, 401, 401]
        blocked = attacker.get("/api/me", auth=ADMIN)  # even the right password waits
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert neighbour.get("/api/me", auth=ADMIN).status_code == 200  # other clients unaffected
        started = time.monotonic()
        wait_for(lambda: attacker.get("/api/me", auth=ADMIN).status_code == 200, 10,
                 "the block to lift", interval=0.2)
        assert time.monotonic() - started < 5
        # 300 guesses now take minutes instead of 0.08 s: each costs a doubling wait.
        for i in range(3):
            attacker.get("/api/me", auth=("boss", f"again{i}"))
        assert attacker.get("/api/me", auth=("boss", "x")).status_code == 429


def _slow_headers(port: int, every: float, stop_after: float) -> float:
    """Send one header line every ``every`` s; seconds until the server closed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=stop_after)
    started = time.monotonic()
    closed = threading.Event()

    def trickle() -> None:
        try:
            sock.sendall(b"GET /api/me HTTP/1.1\r\nHost: x\r\n")
            for i in range(int(stop_after / every)):
                if closed.wait(every):
                    return
                sock.sendall(b"X-Slow-%d: 1\r\n" % i)
        except OSError:
            return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        while sock.recv(1024):
            pass
    except OSError:
        pass
    elapsed = time.monotonic() - started
    closed.set()
    thread.join(5)
    sock.close()
    return elapsed


def test_slow_headers_and_stalled_bodies_are_cut_off(tmp_path: Path,
                                                     monitors: list[Monitor]) -> None:
    monitor = Monitor(tmp_path, "--header-timeout", "1", "--body-timeout", "1",
                      env={"CONVEYOR_MONITOR_BASIC_AUTH": f"{ADMIN[0]}:{ADMIN[1]}"})
    monitors.append(monitor)
    # Before: a one-header-a-second client held a connection for 25 s.
    assert _slow_headers(monitor.port, every=0.3, stop_after=20) < 3
    sock = socket.create_connection(("127.0.0.1", monitor.port), timeout=10)
    import base64

    token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    sock.sendall(f"POST /api/dead-letters/replay HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Basic {token}\r\nX-Conveyor-Action: 1\r\n"
                 f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"qu"
                 .encode())
    started = time.monotonic()
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 3
    sock.close()
    # The monitor still serves everyone else.
    with monitor.client() as client:
        assert client.get("/api/me", auth=ADMIN).status_code == 200


def test_tls_with_a_certificate_and_key(tmp_path: Path, monitors: list[Monitor]) -> None:
    cert, key = self_signed(tmp_path)
    monitor = Monitor(tmp_path, "--certfile", str(cert), "--keyfile", str(key),
                      env={"CONVEYOR_MONITOR_BASIC_AUTH": f"{ADMIN[0]}:{ADMIN[1]}"})
    monitors.append(monitor)
    assert f"https://127.0.0.1:{monitor.port}/" in monitor.output()
    trust = ssl.create_default_context(cafile=str(cert))
    with monitor.client(scheme="https", verify=trust) as client:
        assert client.get("/api/me", auth=ADMIN).json()["user"] == ADMIN[0]
    with monitor.client() as plain, pytest.raises(httpx.HTTPError):
        plain.get("/api/me", auth=ADMIN)  # plain HTTP to a TLS port gets nothing
    lone = subprocess.run([sys.executable, "-m", "conveyor", "-A", "monapp", "monitor",
                           "--certfile", str(cert)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path),
                                   CONVEYOR_MONITOR_BASIC_AUTH="a:b"))
    assert lone.returncode == 2 and "both --certfile and --keyfile" in lone.stderr


def test_a_proxy_user_header_is_believed_only_from_the_proxy(tmp_path: Path,
                                                             monitors: list[Monitor]) -> None:
    monitor = Monitor(tmp_path, "--trusted-proxy", "127.0.0.1")  # no basic accounts at all
    monitors.append(monitor)
    vouched = {"X-Forwarded-User": "alice@example.com"}
    with monitor.client() as proxy, monitor.client("127.0.0.2") as outsider:
        assert proxy.get("/api/me", headers=vouched).json() == {
            "user": "alice@example.com", "role": "readonly"}
        assert proxy.get("/api/me").status_code == 401  # the proxy must still name a user
        assert outsider.get("/api/me", headers=vouched).status_code == 401
        forbidden = proxy.post("/api/dead-letters/replay", headers={**vouched, **ACT},
                               json={"queue": "q"})
        assert forbidden.status_code == 403  # --proxy-role readonly (the default)
