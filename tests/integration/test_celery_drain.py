"""Switch-over from a live Celery project: tasks queued by real Celery run here once.

Celery (a dev dependency, used only as the producer) queues tasks on Redis
the way a running project does: plain calls, countdowns (ETA), a priority
(kombu's ``<queue>\\x06\\x169`` list), a ``link`` callback, a chain and a
chord. No Celery worker runs. ``CeleryRedisDrain`` (``conveyor
drain-celery``) moves them into a Conveyor broker, and a real Conveyor
worker runs each exactly once under its Celery id. Celery's message format
is protocol 2 (``celery/app/amqp.py`` ``as_task_v2``: headers with ``id``,
``task``, ``eta``; body ``[args, kwargs, embed]``); kombu's Redis layout is
``kombu/transport/redis.py`` (``_put``, ``_q_for_pri``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import celery  # the producer side only: a dev dependency, never imported by conveyor/
import pytest

from conveyor import Conveyor
from conveyor._celery_drain import SKIPPED, CeleryRedisDrain, read_message
from conveyor.testing import run_worker
from tests.integration.processes import ROOT

LEDGER: list[tuple[str, tuple[Any, ...], float]] = []
LOCK = threading.Lock()


@pytest.fixture
def producer(redis_url: str) -> Iterator[Any]:
    app = celery.Celery("legacy", broker=redis_url, backend=redis_url)
    app.conf.broker_connection_retry_on_startup = False
    yield app
    app.close()


@pytest.fixture
def conveyor_app(sqlite_url: str) -> Iterator[Conveyor]:
    LEDGER.clear()
    app = Conveyor("switched", broker=sqlite_url, set_as_current=False)

    @app.task(name="shop.record", bind=True)
    def record(self: Any, *args: Any) -> Any:
        with LOCK:
            LEDGER.append((self.request.id, args, time.time()))
        return args[0]

    yield app
    app.close()


def _queue_like_a_running_project(producer: Any) -> float:
    sig = celery.signature
    for i in range(30):
        producer.send_task("shop.record", args=(i,), task_id=f"plain-{i}")
    eta_sent = time.time()
    for i in range(3):
        producer.send_task("shop.record", args=(f"later-{i}",), task_id=f"eta-{i}", countdown=1)
    producer.send_task("shop.record", args=("urgent",), task_id="prio-9", priority=9)
    producer.send_task("shop.record", args=("parent",), task_id="linked",
                       link=sig("shop.record", args=("callback",)))
    celery.chain(sig("shop.record", args=("c1",)), sig("shop.record", args=("c2",))).apply_async(
        task_id="chain-1")
    header = [sig("shop.record", args=("h1",))]
    celery.chord(header, sig("shop.record", args=("body",))).apply_async()
    return eta_sent


def test_every_queued_celery_task_runs_once_under_its_id(
        producer: Any, conveyor_app: Conveyor, redis_url: str) -> None:
    eta_sent = _queue_like_a_running_project(producer)
    drain = CeleryRedisDrain(conveyor_app, redis_url, ["celery"])
    first = drain.run_once()
    assert first.moved == 36  # 30 plain, 3 ETA, 1 priority, 1 linked, 1 chain head
    assert [reason for _, reason in first.skipped] == [
        "a chord member: its join lives in Celery's result backend"]
    assert drain.run_once().moved == 0  # nothing left, nothing sent twice
    with run_worker(conveyor_app):
        assert conveyor_app.AsyncResult("plain-7").get(timeout=20) == 7
        assert conveyor_app.AsyncResult("eta-2").get(timeout=20) == "later-2"
        deadline = time.monotonic() + 20
        assert conveyor_app.AsyncResult("chain-1").get(timeout=20) == "c1"  # the chain's id
        while len(LEDGER) < 38 and time.monotonic() < deadline:
            time.sleep(0.05)
    ids = Counter(task_id for task_id, _, _ in LEDGER)
    assert len(LEDGER) == 38, LEDGER  # 36 moved, plus the callback and the chain's second step
    assert max(ids.values()) == 1
    assert {f"plain-{i}" for i in range(30)} <= set(ids)
    runs = {args: at for _, args, at in LEDGER}
    assert min(runs[(f"later-{i}",)] for i in range(3)) >= eta_sent + 0.9  # the ETA held
    assert ("linked", "callback") not in runs and ("parent", "callback") in runs
    assert ("c1", "c2") in runs  # the chain's next step got the first one's value
    import redis

    kept = redis.Redis.from_url(redis_url).lrange(SKIPPED + "celery", 0, -1)
    assert len(kept) == 1  # kept, not lost
    _, (args, _, embed) = read_message(kept[0])
    assert args == ["h1"] and embed["chord"]["task"] == "shop.record"


def test_drain_celery_command(producer: Any, redis_url: str, sqlite_url: str) -> None:
    for i in range(5):
        producer.send_task("shop.record", args=(i,))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONVEYOR_BROKER_URL": sqlite_url}
    done = subprocess.run([sys.executable, "-m", "conveyor", "-A", "tests.integration.worker_app",
                           "drain-celery", redis_url, "-Q", "celery"], env=env, text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "moved 5 task(s)" in done.stdout
    check = Conveyor("check", broker=sqlite_url, set_as_current=False)
    assert sum(s.ready for s in check.broker.stats(["default"])) == 5
    check.close()
