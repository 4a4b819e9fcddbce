"""The event store contract on PostgreSQL (a schema of this test's own)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from conveyor import states
from conveyor._events import (
    Batch,
    EventStore,
    TaskEntry,
    TaskQuery,
    TimelineEvent,
    minute_of,
    store_from_url,
)
from conveyor.exceptions import BrokerUnavailable

from .event_store_contract import EventStoreContract


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url

    def test_text_postgresql_cannot_hold_is_written_escaped(self, store: EventStore) -> None:
        """PostgreSQL's text refuses NUL and UTF-8 cannot carry a lone surrogate; a
        hostile body's task must not make its worker's every later batch fail."""
        now = time.time()
        store.write(Batch("w\x00", tasks=[TaskEntry(
            "bad\x00id", "proj.\ud800", states.FAILURE, queue="q\x00", worker="w\x00",
            info="boom\x00\udcff", updated_at=now)],
            timeline=[TimelineEvent("bad\x00id", now, states.FAILURE, "x\x00\ud800", "w")]))
        [found] = store.tasks(TaskQuery())
        assert (found.task_id, found.name, found.info) == (
            "bad\\x00id", "proj.\\ud800", "boom\\x00\\udcff")
        assert [e.detail for e in store.timeline("bad\x00id")] == ["x\\x00\\ud800"]
        assert store.tasks(TaskQuery(task_id="bad\x00")) == [found]  # searched as written

    def test_a_failed_prune_does_not_make_the_worker_send_its_batch_again(
            self, store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
        """The batch committed before the prune: an error from the prune must not
        reach the worker, which would put the batch back and count it twice."""
        def broken(now: float | None = None) -> None:
            raise BrokerUnavailable("PostgreSQL at here: prune task events failed")

        monkeypatch.setattr(store, "prune", broken)
        minute = minute_of(time.time())
        store.write(Batch("w", cells={(minute, "t", "n:SUCCESS"): 1}))
        assert store.cells(minute, minute, 60) == [(minute, "t", "n:SUCCESS", 1.0)]

    def test_workers_adding_to_the_same_cells_at_once_never_deadlock(self, url: str) -> None:
        """Each batch locks its rows in key order, whatever order its worker built them
        in: four writers upserting the same cells and index rows concurrently all
        commit, and every count adds up."""
        minute = minute_of(time.time())
        keys = [(minute, f"t{i}", "n:SUCCESS") for i in range(40)]
        stores = [store_from_url(url) for _ in range(4)]
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            rnd = random.Random(n)
            try:
                for _ in range(15):
                    order = rnd.sample(keys, len(keys))
                    tasks = [TaskEntry(f"id{i}", "proj.t", states.SUCCESS, updated_at=time.time())
                             for i in rnd.sample(range(40), 40)]
                    stores[n].write(Batch(f"w{n}", cells=dict.fromkeys(order, 1.0), tasks=tasks))
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        cells = {task: value for _, task, _, value in stores[0].cells(minute, minute, 60)}
        assert cells == {f"t{i}": 60.0 for i in range(40)}
        for store in stores:
            store.close()


def test_opening_needs_no_server_and_first_use_says_it_is_down() -> None:
    """A worker builds its event sink before it waits for the database: opening the
    store must not connect; the first write names the server instead."""
    store = store_from_url("postgresql://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1/nowhere"):
        store.worker_heartbeat({"id": "w"}, ttl=10)
    store.close()
