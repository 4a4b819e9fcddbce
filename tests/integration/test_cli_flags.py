"""Celery's production command lines, run for real (issue 18, item 2).

Worker and beat daemons (``-D --pidfile --logfile``, Celery's
``celery.platforms.detached``/``create_pidlock``), the flags that are
accepted with a note, ``multi`` with the node-name forms of Celery's
daemonizing guide, ``purge``'s prompt, ``call --eta/--expires``, ``result``,
``events --dump`` and ``shell``.  Every process is a real ``python -m
conveyor`` on an SQLite broker; waits are bounded polls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor._daemon import alive
from tests.integration.processes import ROOT, Ledger, wait_for

APP = "tests.integration.worker_app"
WORK = f"{APP}.work"


class Cli:
    """``python -m conveyor -A worker_app ...`` against one SQLite broker and result store."""

    def __init__(self, folder: Path, broker_url: str | None = None) -> None:
        self.folder = folder
        self.ledger = Ledger(folder / "ledger")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "LEDGER": str(self.ledger.path),
                    "CONVEYOR_BROKER_URL": broker_url or f"sqlite:///{folder}/broker.db",
                    "CONVEYOR_RESULT_BACKEND": f"sqlite:///{folder}/results.db"}

    def __call__(self, *args: str, stdin: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "conveyor", "-A", APP, *args],
                              cwd=ROOT, env=self.env, input=stdin, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def app(self) -> Conveyor:
        app = Conveyor("cli-test")
        app.conf.update({"broker_url": self.env["CONVEYOR_BROKER_URL"],
                         "result_backend": self.env["CONVEYOR_RESULT_BACKEND"]})
        return app


def _pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def _gone(pid: int) -> bool:
    return not alive(pid)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


NOTED = ("-E", "-O", "fair", "--without-gossip", "--without-mingle", "--without-heartbeat")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Path]]:
    """One detached worker started with every noted flag, -X, --purge and a soft limit."""
    cli = Cli(tmp_path_factory.mktemp("cli"))
    cli.app().send_task(WORK, queue="default")  # for --purge to drop
    pidfile = cli.folder / "cf1.pid"
    started = cli("worker", "-P", "threads", "-c", "4", "-n", "cf1@%h", "-D",
                  f"--pidfile={cli.folder}/%n.pid", "-f", f"{cli.folder}/%n%I.log",
                  "-Q", "default,other", "-X", "other", "--purge", "--soft-time-limit", "0.5",
                  *NOTED)
    assert started.returncode == 0, started.stderr
    try:
        wait_for(lambda: "ready" in (cli.folder / "cf1.log").read_text(), 30, "worker ready")
        yield cli, pidfile
    finally:
        if pidfile.exists():
            pid = _pid(pidfile)
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: _gone(pid), 30, "daemon exit")


def test_detached_worker_runs_in_its_own_session_and_logs_to_the_logfile(
        daemon: tuple[Cli, Path]) -> None:
    cli, pidfile = daemon
    pid = _pid(pidfile)
    # A new session (no terminal of ours), and not its leader (the second fork), so
    # it can never acquire a controlling terminal again.
    assert alive(pid) and os.getsid(pid) not in (pid, os.getsid(0))
    log = (cli.folder / "cf1.log").read_text()
    assert "queues=default " in log  # -Q default,other minus -X other
    assert "--purge: dropped 1 message(s) from default" in log
    notes = next(line for line in log.splitlines() if "have no effect" in line)
    for flag in ("-E/--task-events", "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "-O:"):
        assert flag in notes


def test_a_live_pidfile_is_refused(daemon: tuple[Cli, Path]) -> None:
    cli, pidfile = daemon
    again = cli("worker", "-P", "threads", "-n", "cf1@%h", "-D", f"--pidfile={pidfile}")
    assert again.returncode == 1
    assert f"pidfile {pidfile} holds pid {_pid(pidfile)}, which is running" in again.stderr


def test_call_countdown_eta_expires_and_result(daemon: tuple[Cli, Path]) -> None:
    cli, _ = daemon
    soon = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    by_eta = cli("call", WORK, "--eta", soon).stdout.strip()
    past = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()
    expired = cli("call", WORK, "--expires", past).stdout.strip()
    by_countdown = cli("call", WORK, "-a", "[0.01]", "--countdown", "0.2",
                       "--expires", "60").stdout.strip()
    for task_id in (by_eta, by_countdown):
        done = cli("result", task_id)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().isdigit()  # work() returns the pid that ran it
    started = {task_id for _, task_id, _, _ in cli.ledger.events("start")}
    assert {by_eta, by_countdown} <= started
    wait_for(lambda: cli.app().AsyncResult(expired).state == "REVOKED", 10, "expired revoked")
    assert expired not in started


def test_soft_time_limit_flag_and_result_traceback(daemon: tuple[Cli, Path]) -> None:
    cli, _ = daemon
    task_id = cli("call", WORK, "-a", "[5]").stdout.strip()
    failed = cli("result", task_id)
    assert failed.returncode == 1 and "SoftTimeLimitExceeded" in failed.stderr
    assert "SoftTimeLimitExceeded" in cli("result", task_id, "--traceback").stdout


def test_events_dump_prints_task_events_as_they_happen(daemon: tuple[Cli, Path]) -> None:
    cli, _ = daemon
    dump = subprocess.Popen([sys.executable, "-m", "conveyor", "-A", APP, "events", "--dump",
                             "--timeout", "30"], cwd=ROOT, env=cli.env,
                            stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert dump.stdout is not None
        assert "capturing" in dump.stdout.readline()  # from here on, events are printed
        task_id = cli("call", WORK).stdout.strip()
        wanted = f"task-success: {WORK}[{task_id}]"
        while not any(wanted in line for line in lines):
            line = dump.stdout.readline()
            assert line, f"--dump ended without {wanted}: {lines}"
            lines.append(line)
    finally:
        dump.kill()
        dump.wait()
    assert any(f"task-started: {WORK}[{task_id}]" in line for line in lines), lines


def test_stale_pidfile_is_replaced_and_sigterm_removes_it(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    pidfile = tmp_path / "node.pid"
    pidfile.write_text(f"{_dead_pid()}\n")
    started = cli("worker", "-P", "threads", "-c", "1", "-D", f"--pidfile={pidfile}",
                  "-f", str(tmp_path / "node.log"))
    assert started.returncode == 0, started.stderr
    pid = _pid(pidfile)
    assert alive(pid) and f"detached: pid {pid}" in started.stdout
    wait_for(lambda: "ready" in (tmp_path / "node.log").read_text(), 30, "worker ready")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: _gone(pid), 30, "warm shutdown")
    assert not pidfile.exists()
    assert "warm shutdown" in (tmp_path / "node.log").read_text()


def test_multi_start_and_stopwait_two_nodes(tmp_path: Path) -> None:
    """The forms of Celery's daemonizing guide: names first, %n in the paths, and -A
    before multi (its systemd unit's ``-A $CELERY_APP multi start $CELERYD_NODES``)."""
    cli = Cli(tmp_path)
    paths = (f"--pidfile={tmp_path}/run/%n.pid", f"--logfile={tmp_path}/log/%n%I.log")
    started = cli("multi", "start", "w1", "w2", "-P", "threads", "-c", "1", *paths)
    assert started.returncode == 0, started.stdout + started.stderr
    pids = [_pid(tmp_path / "run" / f"w{i}.pid") for i in (1, 2)]
    assert len(set(pids)) == 2 and all(alive(p) for p in pids)
    for i in (1, 2):
        wait_for(lambda i=i: "ready" in (tmp_path / "log" / f"w{i}.log").read_text(), 30,
                 f"w{i} ready")
        assert f"worker w{i}@" in (tmp_path / "log" / f"w{i}.log").read_text()
    stopped = subprocess.run(
        [sys.executable, "-m", "conveyor", "multi", "stopwait", "w1", "w2", "-A", APP, *paths],
        cwd=ROOT, env=cli.env, capture_output=True, text=True, timeout=60, check=False)
    assert stopped.returncode == 0 and "all stopped" in stopped.stdout
    assert not any(alive(p) for p in pids)
    assert not list((tmp_path / "run").iterdir())


@pytest.mark.parametrize("broker", ["sqlite", "redis"])
def test_purge_asks_first_and_defaults_to_the_apps_queues(tmp_path: Path, broker: str,
                                                          request: pytest.FixtureRequest) -> None:
    """Celery's purge: the app's queues without -Q, -X excluded, a question unless -f."""
    url = request.getfixturevalue("redis_url") if broker == "redis" else None
    cli = Cli(tmp_path, url)
    app = cli.app()
    for queue in ("default", "default", "other"):
        app.send_task(WORK, queue=queue)

    def ready(queue: str) -> int:
        return sum(s.ready for s in app.broker.stats() if s.queue == queue)

    declined = cli("purge", stdin="n\n")
    assert declined.returncode == 1 and "1 queue(s): default" in declined.stdout
    assert ready("default") == 2
    accepted = cli("purge", stdin="y\n")
    assert accepted.returncode == 0 and "Purged 2 message(s) from 1 queue(s)" in accepted.stdout
    assert ready("default") == 0 and ready("other") == 1
    app.send_task(WORK, queue="default")
    forced = cli("purge", "-f", "-Q", "default,other", "-X", "other")  # no question asked
    assert forced.returncode == 0 and "default: purged 1 messages" in forced.stdout
    assert "other" not in forced.stdout and ready("other") == 1


def test_beat_detaches_with_pidfile_and_notes_the_shelve_file(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    pidfile = tmp_path / "beat.pid"
    started = cli("beat", "-D", f"--pidfile={pidfile}", "-f", str(tmp_path / "beat.log"),
                  "-s", str(tmp_path / "celerybeat-schedule"))
    assert started.returncode == 0, started.stderr
    pid = _pid(pidfile)
    log = tmp_path / "beat.log"
    wait_for(lambda: "-s/--schedule: run history lives in the broker" in log.read_text(), 30,
             "the note in the log")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: _gone(pid), 30, "beat exit")
    assert not pidfile.exists()


def test_greenlet_pools_are_refused_by_name(tmp_path: Path) -> None:
    refused = Cli(tmp_path)("worker", "-P", "gevent")
    assert refused.returncode == 2
    assert "-P gevent: Conveyor has no greenlet pool" in refused.stderr
    assert "async" in refused.stderr


def test_shell_has_the_app_and_its_tasks(tmp_path: Path) -> None:
    done = Cli(tmp_path)("shell", "--python", stdin="print('ns', app.main, work.name)\n")
    assert "ns worker_app tests.integration.worker_app.work" in done.stdout, done.stderr
