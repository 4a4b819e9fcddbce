"""Signals and logging setup in real worker and beat processes.

Each test starts ``conveyor -A tests.integration.signals_app worker`` (or
``beat``) as a subprocess; the app's receivers append ``signal pid detail``
lines to a file, and the process's output is captured to another, which
the test reads with bounded polls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, states

from .processes import ROOT, children_of, stop, wait_for, worker_env

APP = "tests.integration.signals_app"
Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def sqlite_only(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


class Lines:
    """The signal log: ``signal pid detail`` per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[tuple[str, int, str]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            name, pid, detail = [*line.split(" ", 2), ""][:3]
            out.append((name, int(pid), detail))
        return out

    def of(self, name: str) -> list[tuple[int, str]]:
        return [(pid, detail) for n, pid, detail in self.all() if n == name]


@pytest.fixture
def lines(tmp_path: Path) -> Lines:
    return Lines(tmp_path / "signals.txt")


@pytest.fixture
def spawn(tmp_path: Path, lines: Lines) -> Iterator[Spawn]:
    procs: list[subprocess.Popen[bytes]] = []

    def _spawn(url: str, command: str, *args: str, env_extra: dict[str, str] | None = None,
               **settings: object) -> subprocess.Popen[bytes]:
        settings.setdefault("worker_heartbeat_interval", 0.5)
        env = worker_env(url, tmp_path / "ledger.txt", **settings)
        env.update({"SIGNAL_LOG": str(lines.path), **(env_extra or {})})
        cmd = [sys.executable, "-m", "conveyor", "-A", APP, command, "-l", "INFO", *args]
        with open(tmp_path / "output.txt", "ab") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        stop(proc, signal.SIGKILL, timeout=10)


def output(tmp_path: Path) -> str:
    path = tmp_path / "output.txt"
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_task_and_worker_signals_in_real_worker_processes(
        url: str, pool: str, spawn: Spawn, lines: Lines) -> None:
    """Celery: task_received/prerun/success/failure/postrun fire where the task runs,
    with sender=task (trace.py); worker_process_init and worker_process_shutdown in each
    prefork child (concurrency/prefork.py), worker_before_create_process before each fork
    (asynpool.py); heartbeat_sent per heartbeat (worker/heartbeat.py); celeryd_init,
    worker_init, worker_ready, worker_shutting_down(sig, how, exitcode) and worker_shutdown
    once in the main process (apps/worker.py); beat_init and beat_embedded_init for
    ``-B`` (beat.py)."""
    client = Conveyor("client", broker=url, set_as_current=False)
    try:
        good = client.send_task(f"{APP}.ok", [1])
        bad = client.send_task(f"{APP}.fail")
        worker = spawn(url, "worker", "-P", pool, "-c", "2", "-B")
        wait_for(lambda: len(lines.of("task_postrun")) == 2, 60, "both tasks to finish")
        wait_for(lambda: lines.of("beat_init"), 30, "embedded beat to start")
        assert good.get(timeout=10) == 1 and bad.state == states.FAILURE
        for name in ("task_received", "task_prerun", "task_postrun"):
            assert sorted(d.split()[1] for _, d in lines.of(name)) == sorted([good.id, bad.id])
        assert [d.split()[:2] for _, d in lines.of("task_success")] == [[f"{APP}.ok", good.id]]
        assert [d.split()[:2] for _, d in lines.of("task_failure")] == [[f"{APP}.fail", bad.id]]
        assert {d.split()[2] for _, d in lines.of("task_postrun")} == {"'SUCCESS'", "'FAILURE'"}
        ran_in = {pid for pid, _ in lines.of("task_prerun")}
        wait_for(lambda: lines.of("heartbeat_sent"), 10, "a heartbeat")
        assert {pid for pid, _ in lines.of("heartbeat_sent")} == {worker.pid}
        if pool == "prefork":
            children = set(children_of(worker.pid))
            inits = {pid for pid, _ in lines.of("worker_process_init")}
            assert len(inits) == 2 and inits == children and worker.pid not in inits
            assert ran_in <= children
            assert lines.of("worker_before_create_process") == [
                (worker.pid, "PreforkPool ")] * 2
        else:
            assert ran_in == {worker.pid} and lines.of("worker_process_init") == []
        for name in ("celeryd_init", "worker_init", "worker_ready", "beat_embedded_init"):
            assert [pid for pid, _ in lines.of(name)] == [worker.pid], name
        assert stop(worker) == 0
        [(pid, detail)] = lines.of("worker_shutting_down")
        assert pid == worker.pid and detail == "str sig=SIGTERM how=Warm exitcode=0"
        assert [pid for pid, _ in lines.of("worker_shutdown")] == [worker.pid]
        if pool == "prefork":
            assert {pid for pid, _ in lines.of("worker_process_shutdown")} == inits
        names = [n for n, _, _ in lines.all() if n != "import_modules"]
        assert names.index("celeryd_init") < names.index("worker_init") < names.index(
            "after_setup_logger") < names.index("worker_ready")
        assert names[-1] == "worker_shutdown"
    finally:
        client.close()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_hard_time_limit_and_terminate_send_failure_and_revoked_from_the_supervisor(
        url: str, pool: str, spawn: Spawn, lines: Lines) -> None:
    """Celery: worker/request.py on_timeout sends task_failure(exception=TimeLimitExceeded)
    and a terminating revoke sends task_revoked(terminated=True, signum) from the main
    process, whose pool killed the child.  Conveyor kills with SIGKILL (signum 9); the
    thread pool's one supervisor (issue 17) gives up the task's thread the same way."""
    client = Conveyor("client", broker=url, set_as_current=False)
    try:
        limited = client.send_task(f"{APP}.sleepy", [30], time_limit=0.5)
        stopped = client.send_task(f"{APP}.sleepy", [30])
        worker = spawn(url, "worker", "-P", pool, "-c", "2")
        wait_for(lambda: len(lines.of("sleepy_started")) == 2, 30, "both tasks to start")
        client.revoke(stopped.id, terminate=True)
        wait_for(lambda: lines.of("task_failure") and lines.of("task_revoked"), 30,
                 "the kill signals")
        [(pid, failure)] = lines.of("task_failure")
        assert pid == worker.pid
        assert failure.startswith(f"{APP}.sleepy {limited.id} TimeLimitExceeded(")
        [(pid, revoked)] = lines.of("task_revoked")
        assert pid == worker.pid and revoked == f"{APP}.sleepy {stopped.id} 9"
    finally:
        client.close()


def test_beat_process_sends_beat_init_only(sqlite_only: str, spawn: Spawn, lines: Lines
                                           ) -> None:
    """Celery: beat.py Service.start sends beat_init(sender=service); beat_embedded_init
    only for a beat embedded in a worker.  (No broker semantics: SQLite only.)"""
    beat = spawn(sqlite_only, "beat")
    wait_for(lambda: lines.of("beat_init"), 30, "beat to start")
    assert [pid for pid, _ in lines.of("beat_init")] == [beat.pid]
    assert lines.of("beat_init")[0][1].startswith("Beat")
    assert lines.of("beat_embedded_init") == []
    assert [pid for pid, _ in lines.of("after_setup_logger")] == [beat.pid]


# -- logging (output formats only: SQLite alone; the broker plays no part) ------------

TASK_FMT = "TASKFMT %(task_name)s[%(task_id)s]: %(message)s"
MAIN_FMT = "MAINFMT %(levelname)s %(message)s"


def run_one(url: str, spawn: Spawn, lines: Lines, tmp_path: Path, *args: str,
            env_extra: dict[str, str] | None = None, **settings: object) -> str:
    """Start a worker, run ``ok(1)``, stop it; return the task id."""
    client = Conveyor("client", broker=url, set_as_current=False)
    try:
        result = client.send_task(f"{APP}.ok", [1])
        worker = spawn(url, "worker", "-P", "prefork", "-c", "1", *args, env_extra=env_extra,
                       **settings)
        assert result.get(timeout=60) == 1
        wait_for(lambda: "printed from task" in output(tmp_path), 20, "the task's print")
        assert stop(worker) == 0
        return result.id
    finally:
        client.close()


def test_log_formats_task_format_and_redirected_print(
        sqlite_only: str, spawn: Spawn, lines: Lines, tmp_path: Path) -> None:
    """Celery: app/log.py Logging.setup: worker_log_format for the root handler,
    worker_task_log_format (``%(task_name)s[%(task_id)s]``) for task loggers,
    worker_redirect_stdouts at worker_redirect_stdouts_level for print(), then
    after_setup_logger and after_setup_task_logger with loglevel and format."""
    task_id = run_one(sqlite_only, spawn, lines, tmp_path, worker_log_format=MAIN_FMT,
                      worker_task_log_format=TASK_FMT, worker_redirect_stdouts_level="ERROR")
    text = output(tmp_path)
    assert f"TASKFMT {APP}.ok[{task_id}]: task says 1" in text
    assert "MAINFMT INFO worker " in text  # the worker's own lines
    assert "MAINFMT ERROR printed from task 1" in text
    assert "\x1b[" not in text  # not a terminal: no colour
    [(_, root)] = lines.of("after_setup_logger")
    assert root == f"NoneType loglevel=20 format={MAIN_FMT}"
    [(_, task)] = lines.of("after_setup_task_logger")
    assert task == f"NoneType loglevel=20 format={TASK_FMT}"


def test_hijack_root_logger_false_leaves_the_root_handlers_alone(
        sqlite_only: str, spawn: Spawn, lines: Lines, tmp_path: Path) -> None:
    """Celery: with worker_hijack_root_logger=False the root logger keeps the project's
    handlers and gets none of Celery's; with redirect off, print() stays plain."""
    run_one(sqlite_only, spawn, lines, tmp_path, env_extra={"OWN_ROOT_HANDLER": "1"},
            worker_log_format=MAIN_FMT, worker_hijack_root_logger=False,
            worker_redirect_stdouts=False)
    text = output(tmp_path)
    assert "OWNROOT INFO worker " in text
    assert "MAINFMT" not in text
    assert "\nprinted from task 1\n" in text


def test_connected_setup_logging_means_conveyor_configures_nothing(
        sqlite_only: str, spawn: Spawn, lines: Lines, tmp_path: Path) -> None:
    """Celery: a connected setup_logging receiver replaces Celery's configuration: no
    handler of Celery's, no after_setup_* signals, no stdout redirect."""
    run_one(sqlite_only, spawn, lines, tmp_path, env_extra={"CUSTOM_LOGGING": "1"},
            worker_log_format=MAIN_FMT)
    text = output(tmp_path)
    assert [d for _, d in lines.of("setup_logging")] == ["loglevel=20"]
    assert "CUSTOM INFO worker " in text and "MAINFMT" not in text
    assert "CUSTOM INFO task says 1" in text
    assert "\nprinted from task 1\n" in text
    assert lines.of("after_setup_logger") == lines.of("after_setup_task_logger") == []
    assert os.environ.get("CUSTOM_LOGGING") is None  # the test process is untouched


def _run_on_terminal(url: str, tmp_path: Path, lines: Lines, **settings: object) -> bytes:
    """Run ``ok(1)`` on a worker whose stderr is a pseudo-terminal; return what it wrote."""
    import pty
    import select

    client = Conveyor("client", broker=url, set_as_current=False)
    master, slave = pty.openpty()
    env = worker_env(url, tmp_path / "ledger.txt", worker_heartbeat_interval=0.5, **settings)
    env["SIGNAL_LOG"] = str(lines.path)
    cmd = [sys.executable, "-m", "conveyor", "-A", APP, "worker", "-l", "INFO",
           "-P", "threads", "-c", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        assert client.send_task(f"{APP}.ok", [1]).get(timeout=60) == 1
        while b"printed from task 1" not in seen:  # bounded by the select timeout
            ready, _, _ = select.select([master], [], [], 20)
            assert ready, f"no output on the terminal; got {seen!r}"
            seen += os.read(master, 65536)
        return seen
    finally:
        stop(proc)
        os.close(master)
        client.close()


def test_worker_log_color_on_a_terminal(sqlite_only: str, lines: Lines,
                                        tmp_path: Path) -> None:
    """Celery: app/log.py supports_color: lines are coloured by level when stderr is a
    terminal and worker_log_color is not False (a redirected print is a WARNING: yellow);
    False turns colour off.  Output to a file is never coloured (the other tests)."""
    coloured = _run_on_terminal(sqlite_only, tmp_path, lines)
    [line] = [x for x in coloured.splitlines() if b"printed from task 1" in x]
    assert line.startswith(b"\x1b[33m") and line.endswith(b"\x1b[0m")
    plain = _run_on_terminal(sqlite_only, tmp_path, lines, worker_log_color=False)
    assert b"printed from task 1" in plain and b"\x1b[" not in plain
