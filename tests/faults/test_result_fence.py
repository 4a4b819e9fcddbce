"""The result fence behind case 3, store by store (docs/decisions/0004).

A run that lost its lease must not replace the record of the run that took
over; a retry, a repeated write of the same run, or a new send of the same
task id must still go through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import states
from conveyor.resultstores import ResultStore, result_store_from_url
from conveyor.resultstores.record import Attempt


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    if request.param == "memory":
        url = f"memory://fence-{tmp_path.name}"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
    else:
        url = str(request.getfixturevalue("fault_redis_url"))
    opened = result_store_from_url(url)
    yield opened
    opened.close()


def record(attempt: Attempt, value: str) -> bytes:
    return json.dumps({"task_id": "t", "result": value, "attempt": attempt.as_list()}).encode()


def write(store: ResultStore, attempt: Attempt, value: str, state: str = states.SUCCESS) -> bool:
    return store.set_fenced("t", state, record(attempt, value), 60, attempt)


def stored_value(store: ResultStore) -> str:
    found = store.get("t")
    assert found is not None
    return str(json.loads(found.payload)["result"])


SENT = 1_700_000_000_000_000


def test_a_stale_delivery_cannot_replace_the_newer_one(store: ResultStore) -> None:
    assert write(store, Attempt(SENT, 0, 2), "newer")
    assert not write(store, Attempt(SENT, 0, 1), "stale")
    assert not write(store, Attempt(SENT, 0, 1), "stale", states.STARTED)
    assert stored_value(store) == "newer"


def test_the_same_run_writes_again_and_a_later_one_takes_over(store: ResultStore) -> None:
    assert write(store, Attempt(SENT, 0, 1), "started", states.STARTED)
    assert write(store, Attempt(SENT, 0, 1), "done")
    assert write(store, Attempt(SENT, 0, 3), "after a crash")
    assert stored_value(store) == "after a crash"


def test_a_stale_run_cannot_replace_a_later_retry(store: ResultStore) -> None:
    assert write(store, Attempt(SENT + 5_000_000, 1, 1), "retry")
    assert not write(store, Attempt(SENT, 0, 1), "stale")
    assert stored_value(store) == "retry"


def test_a_new_send_of_the_same_task_id_is_not_fenced(store: ResultStore) -> None:
    assert write(store, Attempt(SENT, 2, 4), "first send, retried")
    assert write(store, Attempt(SENT + 60_000_000, 0, 1), "second send")
    assert stored_value(store) == "second send"


def test_records_written_without_an_attempt_never_block(store: ResultStore) -> None:
    store.set("t", states.SUCCESS, json.dumps({"task_id": "t", "result": "plain"}).encode(), 60)
    assert write(store, Attempt(SENT, 0, 1), "fenced")
    store.set("t", "PROGRESS", b"not json at all", 60)
    assert write(store, Attempt(SENT, 0, 1), "fenced again")
