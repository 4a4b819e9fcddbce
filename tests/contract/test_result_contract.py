"""The result store contract (conveyor/resultstores/base.py), run against every store."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest

from conveyor import states
from conveyor.resultstores import ResultStore, result_store_from_url

from ..conftest import BACKENDS


@pytest.fixture(params=[*BACKENDS, "postgres"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """Every backend kind, plus the PostgreSQL store (which has no event store yet)."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def store(backend_url: str) -> Iterator[ResultStore]:
    s = result_store_from_url(backend_url)
    yield s
    s.close()


def test_set_get_round_trip(store: ResultStore) -> None:
    assert store.get("t1") is None
    store.set("t1", states.STARTED, b"{}", ttl=60)
    got = store.get("t1")
    assert got is not None and got.state == states.STARTED and not got.ready
    store.set("t1", states.SUCCESS, b'{"result": 3}', ttl=60)
    got = store.get("t1")
    assert got is not None and (got.state, got.payload, got.ready) == (
        states.SUCCESS, b'{"result": 3}', True)


def test_get_many_in_order(store: ResultStore) -> None:
    store.set_many([("a", states.SUCCESS, b"1"), ("c", states.FAILURE, b"3")], ttl=60)
    got = store.get_many(["a", "b", "c"])
    assert [g.payload if g else None for g in got] == [b"1", None, b"3"]


def test_wait_wakes_on_write(store: ResultStore, backend_url: str) -> None:
    writer = result_store_from_url(backend_url)
    timer = threading.Timer(0.3, lambda: writer.set("w", states.SUCCESS, b"done", 60))
    start = time.monotonic()
    timer.start()
    got = store.wait("w", timeout=5)
    elapsed = time.monotonic() - start
    timer.join()
    assert got is not None and got.payload == b"done"
    assert 0.25 <= elapsed < 1.0


def test_wait_ignores_unready_states_and_times_out(store: ResultStore) -> None:
    store.set("p", states.PROGRESS, b"half", 60)
    start = time.monotonic()
    got = store.wait("p", timeout=0.3)
    assert got is not None and got.state == states.PROGRESS
    assert 0.25 <= time.monotonic() - start < 2.0


def test_ttl_expires_results(store: ResultStore) -> None:
    store.set("short", states.SUCCESS, b"x", ttl=1)
    assert store.get("short") is not None
    time.sleep(1.6)  # expiry itself is under test
    store.cleanup()
    assert store.get("short") is None


def test_forget(store: ResultStore) -> None:
    store.set("f", states.SUCCESS, b"x", 60)
    store.forget(["f"])
    assert store.get("f") is None


def test_groups(store: ResultStore) -> None:
    assert store.load_group("g") is None
    store.save_group("g", b'["a","b"]', 60)
    assert store.load_group("g") == b'["a","b"]'


def test_chord_join_fires_once_in_order(store: ResultStore) -> None:
    assert store.chord_add("c", 2, 3, b"two", 60) is None
    assert store.chord_add("c", 0, 3, b"zero", 60) is None
    assert store.chord_add("c", 0, 3, b"zero-again", 60) is None  # redelivered header
    fired = store.chord_add("c", 1, 3, b"one", 60)
    assert fired in ([b"zero", b"one", b"two"], [b"zero-again", b"one", b"two"])
    assert store.chord_add("c", 2, 3, b"two", 60) is None  # a late repeat of another header
    assert store.chord_add("c", 0, 3, b"zero", 60) is None


def test_chord_completer_repeat_gets_the_parts_again(store: ResultStore) -> None:
    """A redelivered completer (killed before it sent the body) must be able to send it."""
    assert store.chord_add("r", 1, 2, b"one", 60) is None
    assert store.chord_add("r", 0, 2, b"zero", 60) == [b"zero", b"one"]
    assert store.chord_add("r", 0, 2, b"zero-again", 60) == [b"zero", b"one"]
    assert store.chord_add("r", 0, 2, b"zero-again", 60) == [b"zero", b"one"]
    assert store.chord_add("r", 1, 2, b"one-again", 60) is None
    assert store.chord_fail("r", 60) is False  # a fired chord never fails
    assert store.chord_add("r", 0, 2, b"zero", 60) == [b"zero", b"one"]


def test_failed_chord_never_fires_for_a_repeat(store: ResultStore) -> None:
    assert store.chord_add("f", 0, 2, b"zero", 60) is None
    assert store.chord_fail("f", 60) is True
    for index in (1, 1, 0):
        assert store.chord_add("f", index, 2, b"x", 60) is None
    assert store.chord_fail("f", 60) is False


def _join(url: str, chord_id: str, indexes: list[int], size: int,
          out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    s = result_store_from_url(url)
    fired = 0
    for i in indexes:
        if s.chord_add(chord_id, i, size, str(i).encode(), 60) is not None:
            fired += 1
    out.put(fired)


def test_chord_join_is_exactly_once_across_processes(store: ResultStore,
                                                      backend_url: str) -> None:
    if backend_url.startswith("memory://"):
        pytest.skip("the memory store lives in one process")
    size = 400
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    parts = [list(range(k, size, 4)) for k in range(4)]
    procs = [ctx.Process(target=_join, args=(backend_url, "big", p, size, out)) for p in parts]
    for p in procs:
        p.start()
    fired = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
    assert fired == 1
