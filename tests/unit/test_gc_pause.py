"""``conveyor._gc.paused``: bulk sends pause the cyclic collector, and always resume it."""

from __future__ import annotations

import gc
import os
import threading
import uuid
from collections.abc import Iterator

import pytest

from conveyor import Conveyor, group
from conveyor._gc import paused


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_a_pause_turns_the_collector_off_and_back_on_even_after_an_error() -> None:
    with pytest.raises(RuntimeError), paused():
        assert not gc.isenabled()
        with paused():  # nested: the outer pause still holds when this one ends
            pass
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_the_application_turned_off_stays_off() -> None:
    gc.disable()
    with paused():
        pass
    assert not gc.isenabled()


def test_overlapping_pauses_in_threads_resume_when_the_last_ends() -> None:
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with paused():
            inside.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    with paused():
        other.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the other thread's pause is still under way
    release.set()
    other.join(10)
    assert gc.isenabled()


def test_a_child_forked_during_a_pause_has_its_collector_on() -> None:
    with paused():
        pid = os.fork()
        if pid == 0:
            os._exit(0 if gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gc.isenabled()


def test_a_group_is_built_and_written_with_the_collector_paused() -> None:
    app = Conveyor("gc-pause", broker=f"memory://{uuid.uuid4().hex}", set_as_current=False)

    @app.task(name="t.x")
    def x(n: int) -> int:
        return n

    seen: list[bool] = []
    real = app.broker.enqueue_many

    def recording(envelopes: object) -> object:
        seen.append(gc.isenabled())
        return real(envelopes)  # type: ignore[arg-type]

    app.broker.enqueue_many = recording  # type: ignore[method-assign]
    result = group(x.s(i) for i in range(50)).apply_async()
    app.send_many("t.x", [(i,) for i in range(5)])
    assert seen == [False, False] and gc.isenabled()
    assert len(result.results) == 50
