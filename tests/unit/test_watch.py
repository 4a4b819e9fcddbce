"""The supervisor and its children: the poll set (reports in bunches), and orphans."""

from __future__ import annotations

import multiprocessing
import time

from conveyor.worker.watch import ChildWatch

_CTX = multiprocessing.get_context("fork")


def _exit_now() -> None:
    pass


def test_reports_and_exits_are_told_apart_and_reports_come_in_bunches() -> None:
    reader, writer = _CTX.Pipe(duplex=False)
    process = _CTX.Process(target=time.sleep, args=(30,))
    process.start()
    watch = ChildWatch(min_interval=0.2)
    watch.add(7, reader.fileno(), process.sentinel)
    try:
        assert watch.wait(0) == ([], [])
        writer.send(["first"])
        assert watch.wait(1) == ([7], [])
        first_seen = time.monotonic()
        assert watch.readable(7) and reader.recv() == ["first"]
        assert not watch.readable(7)

        writer.send(["second"])
        started = time.monotonic()
        assert watch.wait(0.05) == ([], [])  # within the quiet interval: pipes wait
        assert time.monotonic() - started < 0.15
        process.kill()
        assert watch.wait(1) == ([], [7])  # but an exit is seen at once
        deadline = time.monotonic() + 2
        while not watch.wait(0.05)[0]:  # after the interval the report is there too
            assert time.monotonic() < deadline, "the report was never seen"
        assert time.monotonic() - first_seen >= 0.19
    finally:
        process.kill()
        process.join()
        watch.remove(7)
    assert watch.wait(0) == ([], [])


def _check_parent(parent: int) -> None:
    from conveyor.worker.prefork import _die_with_parent

    _die_with_parent(parent)  # exits at once (code 1) if the parent is not `parent`


def test_a_child_whose_supervisor_is_already_gone_exits_at_once() -> None:
    """The kernel's parent-death signal misses a parent that died before the
    child asked for it; the child checks its parent itself."""
    import os

    orphan = _CTX.Process(target=_check_parent, args=(os.getpid() + 1_000_000,))
    orphan.start()
    orphan.join(10)
    assert orphan.exitcode == 1
    child = _CTX.Process(target=_check_parent, args=(os.getpid(),))
    child.start()
    child.join(10)
    assert child.exitcode == 0
