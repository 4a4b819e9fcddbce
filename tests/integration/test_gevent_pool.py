"""``-P gevent``: hundreds of I/O-bound tasks at once in one worker process (issue 18).

Celery's gevent pool (``celery/concurrency/gevent.py``) runs each task in a
greenlet of one process patched by gevent, so a task waiting on I/O or
``time.sleep`` lets the others run; its soft limit is a ``gevent.Timeout``
raised in the task and a hard limit kills the greenlet.  Conveyor does the
same inside its one supervisor (``conveyor/worker/greenlets.py``): the
supervisor renews every lease and replaces a killed slot, as for threads.

Each test runs a real ``python -m conveyor worker -P gevent`` on Redis and
on SQLite.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import TaskRevokedError, TimeLimitExceeded

from .processes import Ledger, children_of, start_worker, stop, wait_for, worker_env

APP = "tests.integration.worker_app"
WORK = f"{APP}.work"
Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture(params=["redis", "sqlite"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def client(url: str) -> Iterator[Conveyor]:
    app = Conveyor("client", broker=url, result_backend=url, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def spawn(url: str, tmp_path: Path, ledger: Ledger) -> Iterator[Spawn]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **settings: object) -> subprocess.Popen[bytes]:
        env = worker_env(url, ledger.path, result_backend=url, **settings)
        proc = start_worker(env, "-P", "gevent", "--prefetch-multiplier", "1", *args,
                            log=tmp_path / "worker.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop(proc, signal.SIGKILL, timeout=10)


def test_two_hundred_sleeping_tasks_run_at_once_in_one_process(
        client: Conveyor, spawn: Spawn, ledger: Ledger, tmp_path: Path) -> None:
    """Each task sleeps 3 s, past its 2 s lease: only renewal keeps it from being
    handed out again, so each runs exactly once."""
    worker = spawn("-c", "200", broker_lease_timeout=2.0)
    started = time.monotonic()
    results = [client.send_task(WORK, [3.0]) for _ in range(200)]
    pids = {result.get(timeout=60) for result in results}
    took = time.monotonic() - started
    print(f"200 tasks of 3 s on -P gevent -c 200: {took:.1f} s")  # the figure in operations.md
    assert took < 20, f"200 tasks of 3 s took {took:.1f} s"
    assert pids == {worker.pid}, "every task ran in the worker process itself"
    assert children_of(worker.pid) == []
    events = ledger.events()
    first_end = next(i for i, (kind, *_) in enumerate(events) if kind == "end")
    assert first_end == 200, "all 200 started before the first one ended"
    assert set(ledger.count("start").values()) == {1}, "no task ran twice: leases renewed"
    assert len(ledger.count("start")) == 200
    assert "leases lost" not in (tmp_path / "worker.log").read_text()
    assert all(r.state == states.SUCCESS for r in results)


def test_a_hard_limit_kills_one_greenlet_and_the_rest_finish(
        client: Conveyor, spawn: Spawn, ledger: Ledger) -> None:
    worker = spawn("-c", "20")
    limited = client.send_task(f"{APP}.hard_limited")  # sleeps 60 s under a 1 s limit
    others = [client.send_task(WORK, [2.0]) for _ in range(19)]
    with pytest.raises(TimeLimitExceeded):
        limited.get(timeout=30)
    assert {r.get(timeout=30) for r in others} == {worker.pid}
    assert limited.state == states.FAILURE
    assert ledger.count("start")[limited.id] == 1, "the killed task is not run again"
    # The killed slot was replaced: 20 tasks that wait for each other all meet.
    met = [client.send_task(f"{APP}.meet", [20]) for _ in range(20)]
    assert [r.get(timeout=40) for r in met] == ["met"] * 20
    assert worker.poll() is None


def test_a_soft_limit_raises_inside_the_task(client: Conveyor, spawn: Spawn,
                                             ledger: Ledger) -> None:
    worker = spawn("-c", "50")
    neighbour = client.send_task(WORK, [1.0])
    result = client.send_task(f"{APP}.soft_limited")  # sleeps 30 s, catches the soft limit
    assert result.get(timeout=30) == "cleaned up"
    assert ledger.count("cleanup")[result.id] == 1
    assert neighbour.get(timeout=30) > 0
    assert stop(worker, signal.SIGTERM, timeout=20) == 0, "a warm shutdown ends it cleanly"


def test_revoke_terminate_ends_one_task_and_the_worker_serves_on(
        client: Conveyor, spawn: Spawn, ledger: Ledger, tmp_path: Path) -> None:
    worker = spawn("-c", "10", worker_heartbeat_interval=0.5)
    marker = tmp_path / "never"
    held = client.send_task(f"{APP}.hold", [str(marker)])  # runs until marker (30 s bound)
    neighbour = client.send_task(WORK, [2.0])
    wait_for(lambda: ledger.count("start")[held.id], 30, "the task to start")
    held.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        held.get(timeout=20)
    assert held.state == states.REVOKED
    assert neighbour.get(timeout=30) == worker.pid
    assert client.send_task(WORK, [0]).get(timeout=30) == worker.pid


def test_a_cpu_bound_task_holds_every_other_greenlet(client: Conveyor, spawn: Spawn,
                                                     ledger: Ledger) -> None:
    """The documented limit (docs/operations.md): a task that computes without
    waiting on patched I/O runs alone until it returns, whatever ``-c`` says."""
    spawn("-c", "10")
    busy = client.send_task(f"{APP}.busy_c", [2.0])  # the regex engine: never yields
    wait_for(lambda: ledger.count("start")[busy.id], 30, "the CPU-bound task to start")
    quick = client.send_task(WORK, [0])
    assert quick.get(timeout=30) > 0
    order = [(kind, task_id) for kind, task_id, _, _ in ledger.events()]
    assert order.index(("start", quick.id)) > order.index(("end", busy.id))
    assert busy.get(timeout=30) > 0


def test_remote_control_answers_while_a_hundred_greenlets_sleep(
        client: Conveyor, spawn: Spawn, ledger: Ledger) -> None:
    """The control thread is a greenlet too: it answers between the tasks' waits."""
    node = "gevent@test"
    worker = spawn("-c", "100", "-n", node)
    results = [client.send_task(WORK, [4.0]) for _ in range(100)]
    wait_for(lambda: len(ledger.count("start")) == 100, 30, "all 100 tasks to start")
    began = time.monotonic()
    assert client.control.ping(destination=[node], timeout=2.0) == [{node: {"ok": "pong"}}]
    assert time.monotonic() - began < 1.0
    inspect = client.control.inspect(destination=[node], timeout=2.0)
    assert len(inspect.active()[node]) == 100
    stats = inspect.stats()[node]
    assert stats["pid"] == worker.pid and stats["pool"]["max-concurrency"] == 100
    assert {r.get(timeout=30) for r in results} == {worker.pid}
