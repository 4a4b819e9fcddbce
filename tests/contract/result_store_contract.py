"""The result store contract (conveyor/resultstores/base.py): ``ResultStoreContract``.

Not collected on its own. Each store's module subclasses it and overrides the
one hook, the ``url`` fixture: ``tests/contract/test_result_store_<backend>.py``
and, for ``django-db`` (it needs Django configured), ``tests/django/
test_result_store_contract.py``. Besides reading and writing, two guarantees
live here, as every store must keep them:

- the result fence (ADR 0004, guarantee 1): a run that lost its lease cannot
  replace the record of the run that took over (``set_fenced``);
- the chord join (ADR 0002, guarantee 7): ``chord_add`` fires once, in header
  order, across processes; the completer's repeat, after a crash between the
  join and sending the body, gets the parts again; a failed chord never fires;
  a header's join made with its result write (``set_many_fenced_and_join``,
  ADR 0033) counts only if the write was stored.

The same two with a real worker: ``tests/faults/test_fencing.py`` and
``tests/faults/test_chord_crash.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from conveyor import states
from conveyor.resultstores import ResultStore, result_store_from_url
from conveyor.resultstores.base import FencedWrite, JoinPart, Written
from conveyor.resultstores.record import Attempt

# A message's send time in microseconds (``Attempt.sent``), for the fence tests.
SENT = 1_700_000_000_000_000


def _join(url: str, chord_id: str, indexes: list[int], size: int,
          out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    s = result_store_from_url(url)
    fired = 0
    for i in indexes:
        if s.chord_add(chord_id, i, size, str(i).encode(), 60) is not None:
            fired += 1
    out.put(fired)


def _complete_the_join_then_die(url: str, chord_id: str) -> None:
    """The completing header's run: ``chord_add`` hands it the parts, then the
    process is SIGKILLed before it could send the body (exit 3: no parts)."""
    parts = result_store_from_url(url).chord_add(chord_id, 1, 2, b"one", 60)
    if parts != [b"zero", b"one"]:
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)


def fenced_record(attempt: Attempt, value: str) -> bytes:
    return json.dumps({"task_id": "t", "result": value, "attempt": attempt.as_list()}).encode()


def write(store: ResultStore, attempt: Attempt, value: str, state: str = states.SUCCESS) -> bool:
    return store.set_fenced("t", state, fenced_record(attempt, value), 60, attempt)


def stored_value(store: ResultStore) -> str:
    found = store.get("t")
    assert found is not None
    return str(json.loads(found.payload)["result"])


class ResultStoreContract:
    """The result store's rules; a store's test class subclasses this and
    overrides the ``url`` fixture."""

    #: Opened from several processes, it is one store (``memory://`` is not).
    shared_across_processes: ClassVar[bool] = True

    @pytest.fixture
    def url(self) -> str:
        """The one hook: a URL ``result_store_from_url`` opens, empty for this test."""
        raise NotImplementedError(f"{type(self).__name__} must override the url fixture")

    @pytest.fixture
    def store(self, url: str) -> Iterator[ResultStore]:
        s = result_store_from_url(url)
        yield s
        s.close()

    def _needs_processes(self) -> None:
        if not self.shared_across_processes:
            pytest.skip("the memory store lives in one process")

    def test_set_get_round_trip(self, store: ResultStore) -> None:
        assert store.get("t1") is None
        store.set("t1", states.STARTED, b"{}", ttl=60)
        got = store.get("t1")
        assert got is not None and got.state == states.STARTED and not got.ready
        store.set("t1", states.SUCCESS, b'{"result": 3}', ttl=60)
        got = store.get("t1")
        assert got is not None and (got.state, got.payload, got.ready) == (
            states.SUCCESS, b'{"result": 3}', True)

    def test_get_many_in_order(self, store: ResultStore) -> None:
        store.set_many([("a", states.SUCCESS, b"1"), ("c", states.FAILURE, b"3")], ttl=60)
        got = store.get_many(["a", "b", "c"])
        assert [g.payload if g else None for g in got] == [b"1", None, b"3"]

    def test_wait_wakes_on_write(self, store: ResultStore, url: str) -> None:
        writer = result_store_from_url(url)
        timer = threading.Timer(0.3, lambda: writer.set("w", states.SUCCESS, b"done", 60))
        start = time.monotonic()
        timer.start()
        got = store.wait("w", timeout=10)
        elapsed = time.monotonic() - start
        timer.join()
        assert got is not None and got.payload == b"done"
        # Woken by the write, far from the timeout (a loaded machine may be slow to
        # run the timer and the write: the bound is loose, the timeout far away).
        assert 0.25 <= elapsed < 3.0

    def test_wait_ignores_unready_states_and_times_out(self, store: ResultStore) -> None:
        store.set("p", states.PROGRESS, b"half", 60)
        start = time.monotonic()
        got = store.wait("p", timeout=0.3)
        assert got is not None and got.state == states.PROGRESS
        assert 0.25 <= time.monotonic() - start < 2.0

    def test_ttl_expires_results(self, store: ResultStore) -> None:
        store.set("short", states.SUCCESS, b"x", ttl=1)
        assert store.get("short") is not None
        time.sleep(1.6)  # expiry itself is under test
        store.cleanup()
        assert store.get("short") is None

    def test_forget(self, store: ResultStore) -> None:
        store.set("f", states.SUCCESS, b"x", 60)
        store.forget(["f"])
        assert store.get("f") is None

    def test_groups(self, store: ResultStore) -> None:
        assert store.load_group("g") is None
        store.save_group("g", b'["a","b"]', 60)
        assert store.load_group("g") == b'["a","b"]'

    def test_chord_join_fires_once_in_order(self, store: ResultStore) -> None:
        assert store.chord_add("c", 2, 3, b"two", 60) is None
        assert store.chord_add("c", 0, 3, b"zero", 60) is None
        assert store.chord_add("c", 0, 3, b"zero-again", 60) is None  # redelivered header
        fired = store.chord_add("c", 1, 3, b"one", 60)
        assert fired in ([b"zero", b"one", b"two"], [b"zero-again", b"one", b"two"])
        assert store.chord_add("c", 2, 3, b"two", 60) is None  # a late repeat of another header
        assert store.chord_add("c", 0, 3, b"zero", 60) is None

    def test_chord_completer_repeat_gets_the_parts_again(self, store: ResultStore) -> None:
        """A redelivered completer (killed before it sent the body) must be able to send it."""
        assert store.chord_add("r", 1, 2, b"one", 60) is None
        assert store.chord_add("r", 0, 2, b"zero", 60) == [b"zero", b"one"]
        assert store.chord_add("r", 0, 2, b"zero-again", 60) == [b"zero", b"one"]
        assert store.chord_add("r", 0, 2, b"zero-again", 60) == [b"zero", b"one"]
        assert store.chord_add("r", 1, 2, b"one-again", 60) is None
        assert store.chord_fail("r", 60) is False  # a fired chord never fails
        assert store.chord_add("r", 0, 2, b"zero", 60) == [b"zero", b"one"]

    def test_failed_chord_never_fires_for_a_repeat(self, store: ResultStore) -> None:
        assert store.chord_add("f", 0, 2, b"zero", 60) is None
        assert store.chord_fail("f", 60) is True
        for index in (1, 1, 0):
            assert store.chord_add("f", index, 2, b"x", 60) is None
        assert store.chord_fail("f", 60) is False

    def test_chord_join_is_exactly_once_across_processes(self, store: ResultStore,
                                                          url: str) -> None:
        self._needs_processes()
        size = 400
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        parts = [list(range(k, size, 4)) for k in range(4)]
        procs = [ctx.Process(target=_join, args=(url, "big", p, size, out)) for p in parts]
        for p in procs:
            p.start()
        fired = sum(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(10)
        assert fired == 1

    # -- the result fence (ADR 0004), moved from tests/faults/test_result_fence.py ----------
    def test_a_stale_delivery_cannot_replace_the_newer_one(self, store: ResultStore) -> None:
        assert write(store, Attempt(SENT, 0, 2), "newer")
        assert not write(store, Attempt(SENT, 0, 1), "stale")
        assert not write(store, Attempt(SENT, 0, 1), "stale", states.STARTED)
        assert stored_value(store) == "newer"

    def test_the_same_run_writes_again_and_a_later_one_takes_over(
            self, store: ResultStore) -> None:
        assert write(store, Attempt(SENT, 0, 1), "started", states.STARTED)
        assert write(store, Attempt(SENT, 0, 1), "done")
        assert write(store, Attempt(SENT, 0, 3), "after a crash")
        assert stored_value(store) == "after a crash"

    def test_a_stale_run_cannot_replace_a_later_retry(self, store: ResultStore) -> None:
        assert write(store, Attempt(SENT + 5_000_000, 1, 1), "retry")
        assert not write(store, Attempt(SENT, 0, 1), "stale")
        assert stored_value(store) == "retry"

    def test_a_new_send_of_the_same_task_id_is_not_fenced(self, store: ResultStore) -> None:
        assert write(store, Attempt(SENT, 2, 4), "first send, retried")
        assert write(store, Attempt(SENT + 60_000_000, 0, 1), "second send")
        assert stored_value(store) == "second send"

    def test_records_written_without_an_attempt_never_block(self, store: ResultStore) -> None:
        store.set("t", states.SUCCESS,
                  json.dumps({"task_id": "t", "result": "plain"}).encode(), 60)
        assert write(store, Attempt(SENT, 0, 1), "fenced")
        store.set("t", "PROGRESS", b"not json at all", 60)
        assert write(store, Attempt(SENT, 0, 1), "fenced again")

    def test_a_batch_of_fenced_writes_is_fenced_write_by_write(self, store: ResultStore) -> None:
        assert write(store, Attempt(SENT, 0, 2), "newer")
        batch = [
            FencedWrite("t", states.SUCCESS, fenced_record(Attempt(SENT, 0, 1), "stale"),
                        Attempt(SENT, 0, 1)),
            FencedWrite("u", states.SUCCESS, b'{"result": "other"}', Attempt(SENT, 0, 1)),
        ]
        assert store.set_many_fenced(batch, 60) == [False, True]
        assert stored_value(store) == "newer"
        other = store.get("u")
        assert other is not None and other.payload == b'{"result": "other"}'
        later = FencedWrite("t", states.SUCCESS, fenced_record(Attempt(SENT, 0, 3), "later"),
                            Attempt(SENT, 0, 3))
        assert store.set_many_fenced([later], 60) == [True]
        assert stored_value(store) == "later"
        assert store.set_many_fenced([], 60) == []

    def test_a_batched_write_wakes_its_waiter(self, store: ResultStore, url: str) -> None:
        writer = result_store_from_url(url)
        batch = [FencedWrite(t, states.SUCCESS, b"done " + t.encode(), Attempt(SENT, 0, 1))
                 for t in ("v", "w")]
        timer = threading.Timer(0.3, lambda: writer.set_many_fenced(batch, 60))
        start = time.monotonic()
        timer.start()
        got = store.wait("w", timeout=10)
        elapsed = time.monotonic() - start
        timer.join()
        writer.close()
        assert got is not None and got.payload == b"done w"
        assert 0.25 <= elapsed < 3.0  # woken by the write, far from the timeout

    # -- results written with their chord join (ADR 0033) -------------------------------------
    def test_header_writes_join_only_when_stored(self, store: ResultStore) -> None:
        def header(task_id: str, index: int, deliveries: int) -> tuple[FencedWrite, JoinPart]:
            attempt = Attempt(SENT, 0, deliveries)
            return (FencedWrite(task_id, states.SUCCESS, fenced_record(attempt, task_id), attempt),
                    JoinPart("c", index, 3, task_id.encode()))

        plain = FencedWrite("p", states.SUCCESS, b'{"result": "plain"}', Attempt(SENT, 0, 1))
        assert store.set_many_fenced_and_join([header("h0", 0, 2), (plain, None)], 60) == [
            Written(True, None), Written(True, None)]
        # A stale run of header 0 neither writes nor joins; header 1 joins, twice counted once.
        assert store.set_many_fenced_and_join(
            [header("h0", 0, 1), header("h1", 1, 1), header("h1", 1, 1)], 60) == [
            Written(False, None), Written(True, None), Written(True, None)]
        assert store.set_many_fenced_and_join([header("h2", 2, 1)], 60) == [
            Written(True, [b"h0", b"h1", b"h2"])]
        # The completer's repeat gets the parts again; another header's later run does not.
        assert store.set_many_fenced_and_join([header("h2", 2, 1), header("h0", 0, 3)], 60) == [
            Written(True, [b"h0", b"h1", b"h2"]), Written(True, None)]
        found = store.get("h1")
        assert found is not None and json.loads(found.payload)["result"] == "h1"
        assert store.chord_fail("c", 60) is False  # fired
        assert store.set_many_fenced_and_join([], 60) == []

    def test_a_header_write_and_join_fire_once_across_batches(self, store: ResultStore) -> None:
        """Every header written and joined in one batch: the last one completes it."""
        batch = [(FencedWrite(f"b{i}", states.SUCCESS, b"{}", Attempt(SENT, 0, 1)),
                  JoinPart("one-batch", i, 3, str(i).encode())) for i in (2, 0, 1)]
        written = store.set_many_fenced_and_join(batch, 60)
        assert [w.parts for w in written] == [None, None, [b"0", b"1", b"2"]]
        assert all(w.stored for w in written)

    def test_a_failed_chord_does_not_fire_from_a_header_write(self, store: ResultStore) -> None:
        assert store.chord_fail("gone", 60) is True
        write = FencedWrite("g0", states.SUCCESS, b"{}", Attempt(SENT, 0, 1))
        assert store.set_many_fenced_and_join([(write, JoinPart("gone", 0, 1, b"0"))], 60) == [
            Written(True, None)]

    # -- the chord crash window (ADR 0002) ---------------------------------------------------
    def test_a_completer_killed_after_the_join_gets_the_parts_again(
            self, store: ResultStore, url: str) -> None:
        """The join is durable when ``chord_add`` returns: the completer's process dies
        right after it (SIGKILL, nothing flushed or closed), and its redelivery, in
        another process, gets the same parts, so the body is sent; no other header's
        repeat fires, and the fired chord can no longer fail."""
        self._needs_processes()
        assert store.chord_add("crash", 0, 2, b"zero", 60) is None
        child = multiprocessing.get_context("fork").Process(
            target=_complete_the_join_then_die, args=(url, "crash"))
        child.start()
        child.join(30)
        assert child.exitcode == -signal.SIGKILL, "the completer did not get the parts"
        assert store.chord_add("crash", 1, 2, b"one-again", 60) == [b"zero", b"one"]
        assert store.chord_add("crash", 0, 2, b"zero-again", 60) is None
        assert store.chord_fail("crash", 60) is False
