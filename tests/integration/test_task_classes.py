"""Task classes and their hooks, in real worker processes, on every pool.

Each test starts ``conveyor -A tests.integration.task_classes_app worker -P
<pool>`` as a subprocess on SQLite and on Redis, sends the app's tasks, and
reads the hook ledger the task classes write (one JSON line per hook call).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import TimeLimitExceeded

from .processes import ROOT, stop, wait_for, worker_env

APP = "tests.integration.task_classes_app"
POOLS = ["prefork", "threads", "async", "solo"]

Hooks = Callable[[str], list[dict[str, Any]]]
Starter = Callable[[str], "subprocess.Popen[bytes]"]


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "hooks.jsonl"


@pytest.fixture
def hooks(ledger: Path) -> Hooks:
    """The hook calls recorded for one task id, in the order they happened."""
    def read(task_id: str) -> list[dict[str, Any]]:
        if not ledger.exists():
            return []
        text = ledger.read_text()
        # Only whole lines: a worker may be writing the last one as we read.
        whole = text[:text.rfind("\n") + 1].splitlines()
        lines = [json.loads(line) for line in whole]
        return [line for line in lines if line["task_id"] == task_id]

    return read


@pytest.fixture
def worker(url: str, ledger: Path, tmp_path: Path) -> Iterator[Starter]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(pool: str) -> subprocess.Popen[bytes]:
        env = worker_env(url, ledger, broker_lease_timeout=5, worker_heartbeat_interval=0.5)
        concurrency = "1" if pool == "solo" else "2"
        cmd = [sys.executable, "-m", "conveyor", "-A", APP, "worker", "-P", pool,
               "-c", concurrency, "-l", "INFO"]
        log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - owned by Popen
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop(proc, signal.SIGTERM, timeout=20)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def names(calls: list[dict[str, Any]]) -> list[str]:
    return [call["hook"] for call in calls]


def wait_hooks(hooks: Hooks, task_id: str, count: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(hooks(task_id)) >= count, 30, f"{count} hook calls for {task_id}")
    return hooks(task_id)


@pytest.mark.parametrize("pool", POOLS)
def test_hooks_run_with_celerys_arguments_and_moments(pool: str, client: Conveyor, worker: Any,
                                                      hooks: Hooks) -> None:
    """Celery: app/trace.py build_tracer - before_start(task_id, args, kwargs) before the
    body; on_success(retval, task_id, args, kwargs) after mark_as_done; then
    after_return(state, retval, task_id, args, kwargs, einfo); custom attributes and
    methods of the base class reach ``self`` (app/base.py _task_from_fun)."""
    proc = worker(pool)
    result = client.send_task(f"{APP}.add", [2, 3])
    assert result.get(timeout=30) == [5, "hello world", 4, result.id]
    calls = wait_hooks(hooks, result.id, 3)
    assert names(calls) == ["before_start", "on_success", "after_return"]
    start, success, after = calls
    assert (start["args"], start["kwargs"]) == ([2, 3], {})
    assert success["retval"] == [5, "hello world", 4, result.id]
    assert (success["args"], success["kwargs"]) == ([2, 3], {})
    assert success["stored"] == states.SUCCESS, "on_success runs after the result is stored"
    assert (after["status"], after["retval"], after["einfo"]) == ("SUCCESS", success["retval"],
                                                                  False)
    assert {call["request_id"] for call in calls} == {result.id}, "self.request in hooks"
    assert len({call["pid"] for call in calls}) == 1
    if pool == "prefork":
        assert calls[0]["pid"] != proc.pid, "hooks run in the child that ran the task"


@pytest.mark.parametrize("pool", POOLS)
def test_failure_and_retry_hooks(pool: str, client: Conveyor, worker: Any,
                                 hooks: Hooks) -> None:
    """Celery: app/trace.py handle_failure - on_failure(exc, task_id, args, kwargs, einfo)
    after mark_as_failure, einfo with .type/.exception/.traceback; handle_retry -
    on_retry(reason.exc, ..., einfo of the Retry); after_return is skipped for RETRY
    (IGNORE_STATES)."""
    worker(pool)
    failed = client.send_task(f"{APP}.boom", ["bad input"])
    retried = client.send_task(f"{APP}.again", [1])
    with pytest.raises(ValueError, match="bad input"):
        failed.get(timeout=30)
    assert retried.get(timeout=30) == 1

    calls = wait_hooks(hooks, failed.id, 3)
    assert names(calls) == ["before_start", "on_failure", "after_return"]
    failure = calls[1]
    assert failure["exc"] == "ValueError: bad input" and failure["args"] == ["bad input"]
    assert failure["einfo_type"] == "ValueError" and failure["einfo_is_exc"]
    assert "Traceback" in failure["einfo_tb"] and "ValueError: bad input" in failure["einfo_tb"]
    assert failure["stored"] == states.FAILURE, "on_failure runs after the failure is stored"
    assert (calls[2]["status"], calls[2]["retval"]) == ("FAILURE", "ValueError: bad input")

    calls = wait_hooks(hooks, retried.id, 5)
    assert names(calls) == ["before_start", "on_retry", "before_start", "on_success",
                            "after_return"]
    retry = calls[1]
    assert retry["exc"] == "KeyError: 'not yet'" and retry["einfo_type"] == "Retry"
    assert retry["retries"] == 0 and calls[4]["status"] == "SUCCESS"


@pytest.mark.parametrize("pool", POOLS)
def test_async_tasks_and_class_based_tasks_get_the_same_hooks(pool: str, client: Conveyor,
                                                              worker: Any,
                                                              hooks: Hooks) -> None:
    """Celery: app/base.py register_task (class-based tasks with run()) and
    shared_task(base=...) build tasks of the given class; hooks as in app/trace.py."""
    worker(pool)
    ok = client.send_task(f"{APP}.async_add", [1, 2])
    bad = client.send_task(f"{APP}.async_boom", ["async bad"])
    multiplied = client.send_task("task_classes.multiply", [4])
    shared = client.send_task(f"{APP}.shared_add", [7])
    assert ok.get(timeout=30) == [3, "hello async"]
    with pytest.raises(ValueError, match="async bad"):
        bad.get(timeout=30)
    assert multiplied.get(timeout=30) == 40
    assert shared.get(timeout=30) == "hello 7"
    assert names(wait_hooks(hooks, ok.id, 3)) == ["before_start", "on_success", "after_return"]
    assert names(wait_hooks(hooks, bad.id, 3)) == ["before_start", "on_failure", "after_return"]
    calls = wait_hooks(hooks, multiplied.id, 3)
    assert names(calls) == ["before_start", "on_success", "after_return"]
    assert calls[1]["task"] == "task_classes.multiply" and calls[1]["retval"] == 40
    assert names(wait_hooks(hooks, shared.id, 3))[1] == "on_success"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_raising_hook_never_loses_the_outcome_or_the_message(pool: str, client: Conveyor,
                                                               worker: Any,
                                                               hooks: Hooks) -> None:
    """Celery lets an exception in on_success turn a stored SUCCESS into a FAILURE
    (app/trace.py: it reaches the tracer's internal-error path); here the hook's error
    is logged, the stored outcome stands and the message is acknowledged.
    before_start raising ends the run as the body raising would (it is inside the
    tracer's try in app/trace.py), so a Reject from it dead-letters the message."""
    worker(pool)
    kept = client.send_task(f"{APP}.broken_ok")
    failed = client.send_task(f"{APP}.broken_fail")
    refused = client.send_task(f"{APP}.add", [1, 1], {"refuse": True})
    assert kept.get(timeout=30) == "kept"
    with pytest.raises(ValueError, match="still failed"):
        failed.get(timeout=30)
    assert names(wait_hooks(hooks, kept.id, 3)) == ["before_start", "on_success", "after_return"]
    assert names(wait_hooks(hooks, failed.id, 3))[2] == "after_return"
    wait_for(lambda: refused.state == states.FAILURE, 30, "the refused task's record")
    assert names(hooks(refused.id)) == ["before_start"]

    def settled() -> bool:
        [stats] = client.broker.stats(["default"])
        return stats.ready + stats.inflight == 0 and stats.dead == 1

    wait_for(settled, 30, "every message acknowledged, the refused one dead-lettered")
    assert kept.state == states.SUCCESS and failed.state == states.FAILURE


def test_hard_time_limit_calls_on_failure_in_the_parent(client: Conveyor, worker: Any,
                                                        hooks: Hooks) -> None:
    """Celery: worker/request.py Request.on_timeout - after a hard time limit the main
    process stores the failure, then calls task.on_failure(exc, ..., einfo) and
    after_return(FAILURE, exc, ...)."""
    proc = worker("prefork")
    slow = client.send_task(f"{APP}.too_slow")
    with pytest.raises(TimeLimitExceeded):
        slow.get(timeout=30)
    calls = wait_hooks(hooks, slow.id, 3)
    assert names(calls) == ["before_start", "on_failure", "after_return"]
    assert calls[1]["einfo_type"] == "TimeLimitExceeded"
    assert calls[1]["pid"] == proc.pid != calls[0]["pid"], "killed in a child, reported by "\
        "the supervisor"
