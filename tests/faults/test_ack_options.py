"""Acknowledgement options in real worker processes, on SQLite and Redis.

Celery: app/task.py documents acks_late, acks_on_failure_or_timeout and
reject_on_worker_lost; worker/request.py (on_accepted, on_failure,
on_timeout) applies them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor

from ..integration.processes import Ledger, wait_for
from .harness import Workers, dead_letters, wait_ready

APP = "tests.faults.options_app"


def options_workers(url: str, results_url: str | None, ledger: Ledger, tmp_path: Path,
                    children: int) -> Iterator[Workers]:
    workers = Workers(url, ledger, tmp_path, app=APP, results=results_url)
    proc = workers.start("-c", str(children), "--prefetch-multiplier", "1")
    wait_ready(workers, proc)
    yield workers
    workers.stop_all()


@pytest.fixture
def worker(url: str, results_url: str | None, ledger: Ledger,
           tmp_path: Path) -> Iterator[Workers]:
    yield from options_workers(url, results_url, ledger, tmp_path, 1)


@pytest.fixture
def two_children(url: str, results_url: str | None, ledger: Ledger,
                 tmp_path: Path) -> Iterator[Workers]:
    yield from options_workers(url, results_url, ledger, tmp_path, 2)


def final_state(client: Conveyor, task_id: str) -> str:
    return client.AsyncResult(task_id).state  # a fresh handle: no cached record


def empty(client: Conveyor) -> bool:
    [stats] = client.broker.stats(["default"])
    return stats.ready + stats.delayed + stats.inflight == 0


def kill_running_child(ledger: Ledger, task_id: str) -> None:
    wait_for(lambda: ledger.count("start")[task_id] >= 1, 30, "the task to start")
    [pid] = [p for _, t, _, p in ledger.events("start") if t == task_id]
    os.kill(pid, signal.SIGKILL)


def test_acks_late_false_acknowledges_before_the_run(client: Conveyor, worker: Workers,
                                                      ledger: Ledger) -> None:
    """Celery: Request.on_accepted acknowledges when the task is not acks_late, so a
    worker lost mid-task loses it (at most once) and it is marked failed
    (on_failure with WorkerLostError)."""
    task_id = client.send_task(f"{APP}.early_ack", [30]).id
    kill_running_child(ledger, task_id)
    wait_for(lambda: final_state(client, task_id) == "FAILURE", 30, "the failure record")
    result = client.AsyncResult(task_id)
    assert type(result.result).__name__ == "WorkerLostError"
    assert empty(client) and not dead_letters(client.broker, ["default"])
    assert ledger.count("start")[task_id] == 1  # not run again


def test_reject_on_worker_lost_true_redelivers(client: Conveyor, worker: Workers,
                                               ledger: Ledger) -> None:
    """Celery: with reject_on_worker_lost the message is requeued when the child dies."""
    task_id = client.send_task(f"{APP}.lost_rejected", [0.2]).id
    kill_running_child(ledger, task_id)
    wait_for(lambda: final_state(client, task_id) == "SUCCESS", 30, "the rerun to succeed")
    assert ledger.count("start")[task_id] == 2


def test_reject_on_worker_lost_false_fails_with_worker_lost(
        client: Conveyor, worker: Workers, ledger: Ledger) -> None:
    """Celery: without reject_on_worker_lost (and acks_on_failure_or_timeout on) the
    message is acknowledged and the task marked failed with WorkerLostError.  On
    RabbitMQ the dead child's connection hands the message back; its next receiver
    drops it (the supervisor marked it settled): the queue empties a moment later."""
    task_id = client.send_task(f"{APP}.lost_failed", [30]).id
    kill_running_child(ledger, task_id)
    wait_for(lambda: final_state(client, task_id) == "FAILURE", 30, "the failure record")
    assert type(client.AsyncResult(task_id).result).__name__ == "WorkerLostError"
    wait_for(lambda: empty(client), 10, "the message to leave the broker")
    assert not dead_letters(client.broker, ["default"])
    assert ledger.count("start")[task_id] == 1


def test_reject_on_worker_lost_false_is_not_run_by_an_idle_child(
        client: Conveyor, two_children: Workers, ledger: Ledger, url: str) -> None:
    """The same with a second, idle child.  On RabbitMQ it is offered the dead child's
    message the moment the connection drops, before the supervisor can have marked it
    settled; a copy handed out again waits ``redelivery_wait`` before it may run
    (docs/decisions/0030-rabbitmq-redeliveries-wait-for-the-supervisor.md), so it
    finds the mark and is dropped, not run."""
    task_id = client.send_task(f"{APP}.lost_failed", [30]).id
    kill_running_child(ledger, task_id)
    wait_for(lambda: final_state(client, task_id) == "FAILURE", 30, "the failure record")
    if url.startswith("amqp"):
        wait_for(lambda: f"copy of {task_id} handed out again" in two_children.logs(), 10,
                 "the copy RabbitMQ handed out again to be dropped")
    wait_for(lambda: empty(client), 10, "the message to leave the broker")
    assert ledger.count("start")[task_id] == 1
    assert type(client.AsyncResult(task_id).result).__name__ == "WorkerLostError"
    assert all(proc.poll() is None for proc in two_children.procs)


@pytest.mark.parametrize("name", ["fails_unacked", "fails_acks_on_failure_off"])
def test_failure_without_ack_is_rejected_to_the_dead_letters(
        client: Conveyor, worker: Workers, ledger: Ledger, name: str) -> None:
    """Celery: on_failure with acks_on_failure_or_timeout=False (or 5.6's
    acks_on_failure=False) rejects the message without requeue (RabbitMQ routes
    it to a dead-letter exchange); here it goes to the dead-letter queue with
    the reason, and the FAILURE is recorded."""
    task_id = client.send_task(f"{APP}.{name}").id
    wait_for(lambda: task_id in dead_letters(client.broker, ["default"]), 30, "a dead letter")
    assert "ValueError" in dead_letters(client.broker, ["default"])[task_id]
    assert final_state(client, task_id) == "FAILURE"
    assert empty(client) and ledger.count("start")[task_id] == 1


def test_hard_timeout_without_ack_runs_again_until_max_deliveries(
        client: Conveyor, worker: Workers, ledger: Ledger) -> None:
    """Celery: on_timeout without acks_on_failure_or_timeout gives the message back
    (requeue); Conveyor counts each as a delivery, so max_deliveries=2 ends it."""
    task_id = client.send_task(f"{APP}.times_out_unacked").id
    wait_for(lambda: task_id in dead_letters(client.broker, ["default"]), 30, "a dead letter")
    assert ledger.count("start")[task_id] == 2
    assert "max_deliveries=2" in dead_letters(client.broker, ["default"])[task_id]
    assert final_state(client, task_id) == "FAILURE"


def test_hard_timeout_with_ack_runs_once(client: Conveyor, worker: Workers,
                                         ledger: Ledger) -> None:
    """The default (acks_on_failure_or_timeout=True): acknowledged, FAILURE recorded."""
    task_id = client.send_task(f"{APP}.times_out_acked").id
    wait_for(lambda: final_state(client, task_id) == "FAILURE", 30, "the failure record")
    wait_for(lambda: empty(client), 10, "the ack")
    assert ledger.count("start")[task_id] == 1
    assert not dead_letters(client.broker, ["default"])


def test_acks_on_timeout_off_still_acks_a_plain_failure(
        client: Conveyor, worker: Workers, ledger: Ledger) -> None:
    """Celery 5.6: acks_on_timeout applies to time limits only; a failure is acked."""
    task_id = client.send_task(f"{APP}.fails_acks_on_timeout_off").id
    wait_for(lambda: final_state(client, task_id) == "FAILURE", 30, "the failure record")
    wait_for(lambda: empty(client), 10, "the ack")
    assert not dead_letters(client.broker, ["default"])
