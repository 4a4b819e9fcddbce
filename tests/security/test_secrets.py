"""No password from a broker, result or event URL, or from transport options,
appears in any command's output, log line or monitor answer (issue 15, finding 1).

A private Redis that requires a password is started on its own port; the
password is planted three ways (URL userinfo, ``?password=``, and
``broker_transport_options``).  A real worker, a real monitor and every CLI
command run against it, first while it answers and then after it is shut
down, and everything they print or serve is searched for the password.

Celery: ``kombu.utils.url.maybe_sanitize_url`` masks the userinfo password in
what ``celery report`` and the worker banner print; here the same rule also
covers query parameters, options and every error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from conveyor import _redact as redact
from conveyor.exceptions import BrokerError, ConfigurationError
from conveyor.monitor.openapi import openapi_schema
from conveyor.monitor.pages import PAGES
from tests.integration.processes import stop, wait_for
from tests.security import private_redis
from tests.security.private_redis import free_port

PLANTED = "Pl4nted-s3cret-XYZ"
ADMIN = ("boss", "admin-pw-1")
VIEWER = ("viewer", "viewer-pw-1")

APP_SOURCE = """
import os

from conveyor import Conveyor

app = Conveyor("secapp")
app.conf.update({"broker_transport_options": {"password": os.environ["TRANSPORT_PASSWORD"]},
                 "broker_password": os.environ["TRANSPORT_PASSWORD"]})  # a no-effect name


@app.task
def add(a, b):
    return a + b
"""


def test_redaction_rule() -> None:
    """One rule for URLs, options and free text; user names and ordinary keys stay."""
    assert redact.url(f"redis://u:{PLANTED}@h:1/0?password={PLANTED}&prefix=p") == \
        "redis://u:********@h:1/0?password=********&prefix=p"
    assert redact.url(f"sentinel://:{PLANTED}@a;sentinel://:{PLANTED}@b?sentinel_password=x") \
        == "sentinel://:********@a;sentinel://:********@b?sentinel_password=********"
    assert redact.url(f"amqp://guest:{PLANTED}@rabbit//?token={PLANTED}&auth_key=k") == \
        "amqp://guest:********@rabbit//?token=********&auth_key=********"
    nested = {"password": PLANTED, "inner": {"api_key": PLANTED, "key_prefix": "kp",
                                             "url": f"redis://:{PLANTED}@h"}, "n": 3}
    assert redact.options(nested) == {"password": "********", "n": 3, "inner": {
        "api_key": "********", "key_prefix": "kp", "url": "redis://:********@h"}}
    assert redact.value("monitor_basic_auth", [f"a:{PLANTED}"]) == "********"
    schedule = {"refresh-auth-token": {"task": "t", "schedule": 60.0}}
    assert redact.value("beat_schedule", schedule) == schedule
    assert redact.options({"auth": {"password": PLANTED, "user": "u"}}) == {
        "auth": {"password": "********", "user": "u"}}
    assert redact.value("broker_url", "redis://h:1/0") == "redis://h:1/0"
    line = f"failed at redis://:{PLANTED}@h/0 with {{'password': '{PLANTED}'}} token={PLANTED}"
    assert PLANTED not in redact.text(line)
    assert redact.text("bad item 'BAD-KEY=value'") == "bad item 'BAD-KEY=value'"
    assert "redis://:********@h/0" in redact.text(line)
    # A URL inside a URL (PostgreSQL's listen_url=), plain or percent-encoded.
    direct = f"postgresql://u:{PLANTED}@db:5432/shop?sslmode=require&application_name=a"
    for inner in (direct.split("?")[0], quote(direct, safe="")):
        shown = redact.url(f"postgresql://u:{PLANTED}@bouncer:6432/shop?listen_url={inner}")
        assert PLANTED not in shown and "db:5432" in shown, shown
        assert PLANTED not in redact.text(f"error at postgresql://b/s?listen_url={inner} now")


def test_errors_are_redacted_at_the_source() -> None:
    """Every ConveyorError redacts its message, so new call sites are safe by default."""
    assert PLANTED not in str(BrokerError(f"event store redis://:{PLANTED}@h: down"))
    with pytest.raises(ConfigurationError) as caught:
        from conveyor import Conveyor

        Conveyor("x", broker_url=f"redis://:{PLANTED}@h/0?token={PLANTED}&bogus=1").broker  # noqa: B018
    assert "bogus" in str(caught.value) and PLANTED not in str(caught.value)


# -- the whole system against a Redis that needs the planted password ------------------
@dataclass
class System:
    root: Path
    port: int
    env: dict[str, str]
    redis: subprocess.Popen[bytes]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    def cli(self, label: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "conveyor", "-A", "secapp", *args],
                              cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        self.outputs[f"{label}: conveyor {' '.join(args)}"] = done.stdout + done.stderr
        return done

    def spawn(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # noqa: SIM115 - owned by Popen
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", "-A", "secapp", *args],
                                cwd=self.root, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    port = free_port()
    redis_proc = private_redis.start(port, tmp_path, PLANTED)
    (tmp_path / "secapp.py").write_text(textwrap.dedent(APP_SOURCE))
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(tmp_path),
        "TRANSPORT_PASSWORD": PLANTED,
        "CONVEYOR_BROKER_URL": f"redis://:{PLANTED}@127.0.0.1:{port}/0?password={PLANTED}",
        "CONVEYOR_RESULT_BACKEND": f"redis://127.0.0.1:{port}/1?password={PLANTED}",
        "CONVEYOR_WORKER_HEARTBEAT_INTERVAL": "0.5",
        "MONITOR_USERS": f"{ADMIN[0]}:{ADMIN[1]}",
        "CONVEYOR_MONITOR_READONLY_AUTH": f"{VIEWER[0]}:{VIEWER[1]}",
    })
    found = System(tmp_path, port, env, redis_proc)
    yield found
    for proc in found.procs:
        stop(proc, signal.SIGTERM, timeout=20)
    redis_proc.kill()
    redis_proc.wait(10)


def _api_calls() -> list[tuple[str, str]]:
    calls = [("GET", path) for _, path, _ in PAGES] + [("GET", "/tasks/abc")]
    for path, methods in openapi_schema()["paths"].items():
        action = "revoke" if path.startswith("/api/tasks") else "replay"
        concrete = path.replace("{task_id}", "abc").replace("{action}", action)
        calls += [(method.upper(), concrete) for method in methods]
    calls += [("GET", "/api/tasks?since=nan"), ("GET", "/api/overview?window=24h"),
              ("GET", "/api/dead-letters?queue=celery")]
    return calls


def _sweep_monitor(sys_: System, port: int, label: str) -> list[int]:
    statuses = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for user in (VIEWER, ADMIN):
            for method, path in _api_calls():
                response = client.request(method, path, auth=user, json={"queue": "celery"},
                                          headers={"X-Conveyor-Action": "1"})
                statuses.append(response.status_code)
                sys_.outputs[f"{label}: {user[0]} {method} {path}"] = (
                    f"{response.status_code} {response.headers} {response.text}")
    return statuses


def _sweep_cli(sys_: System, label: str) -> None:
    """Every command once; two at a time (each is mostly interpreter start-up)."""
    commands = (("report",), ("healthcheck", "--worker", "sec@host"), ("status",),
                 ("status", "--json"),
                 ("inspect", "active"), ("inspect", "scheduled"), ("inspect", "stats"),
                 ("queues",), ("purge", "-f", "-Q", "celery"),
                 ("dead-letters", "list"), ("dead-letters", "replay", "-Q", "celery"),
                 ("dead-letters", "purge", "-Q", "celery"), ("revoke", "abc"),
                 ("call", "secapp.add", "-a", "[1, 2]"), ("tasks",),
                 ("drain-celery", f"redis://:{PLANTED}@127.0.0.1:{sys_.port}/2"))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda args: sys_.cli(label, *args), commands))


def _log_has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def test_no_command_or_route_shows_the_password(system: System) -> None:
    worker_log, monitor_log, beat_log = (system.root / n for n in ("w.log", "m.log", "b.log"))
    system.spawn(worker_log, "worker", "-P", "threads", "-c", "1", "-n", "sec@host")
    monitor_port = free_port()
    system.spawn(monitor_log, "monitor", "--port", str(monitor_port),
                 "--basic-auth-env", "MONITOR_USERS")
    wait_for(lambda: _log_has(worker_log, " ready: "), 30, "the worker's ready line")
    wait_for(lambda: _log_has(monitor_log, "conveyor monitor on"), 30, "the monitor")
    # The password is the real one: a task really runs with it.
    sent = system.cli("up", "call", "secapp.add", "-a", "[2, 3]")
    assert sent.returncode == 0, sent.stderr
    _sweep_cli(system, "up")
    assert system.cli("up", "healthcheck", "--worker", "sec@host").returncode == 0
    up = _sweep_monitor(system, monitor_port, "up")
    assert 200 in up

    system.redis.send_signal(signal.SIGTERM)
    system.redis.wait(10)
    wait_for(lambda: _log_has(worker_log, "heartbeat failed"), 30, "a failed heartbeat")
    _sweep_cli(system, "down")
    down = _sweep_monitor(system, monitor_port, "down")
    assert 503 in down, "the monitor never reported the store down"
    beat = system.spawn(beat_log, "beat", "-l", "INFO")
    wait_for(lambda: beat.poll() is not None or _log_has(beat_log, "rror"), 30, "beat's error")
    stop(beat, signal.SIGTERM, timeout=20)
    system.outputs["beat"] = beat_log.read_text(errors="replace")
    system.outputs["worker"] = worker_log.read_text(errors="replace")
    system.outputs["monitor"] = monitor_log.read_text(errors="replace")

    bad = dict(system.env, CONVEYOR_BROKER_URL=f"redis://:{PLANTED}@127.0.0.1:{system.port}/0"
                                                  f"?password={PLANTED}&bogus=1")
    for args in (("report",), ("worker", "-P", "solo"), ("beat",), ("status",)):
        done = subprocess.run([sys.executable, "-m", "conveyor", "-A", "secapp", *args],
                              cwd=system.root, env=bad, capture_output=True, text=True,
                              timeout=60, check=False)
        system.outputs[f"config error: {args}"] = done.stdout + done.stderr
    assert "bogus" in system.outputs["config error: ('worker', '-P', 'solo')"]
    assert "heartbeat failed" in system.outputs["worker"]
    assert "does not answer" in system.outputs["down: conveyor healthcheck --worker sec@host"]
    leaks = [label for label, text in system.outputs.items() if PLANTED in text]
    assert leaks == [], f"the planted password appears in: {leaks}"
