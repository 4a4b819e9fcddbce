"""A prefork child's board (ADR 0039): what it holds and runs, read without a wake-up."""

from __future__ import annotations

import os
from typing import Any

import pytest

from conveyor.brokers.base import Delivery
from conveyor.testing import make_test_app
from conveyor.worker.board import Board
from conveyor.worker.execute import ACK, Outcome
from conveyor.worker.main import Worker
from conveyor.worker.prefork import PreforkPool, _Child
from conveyor.worker.supervisor import SlotReporter

Reports = list[list[tuple[Any, ...]]]


def _delivery(n: int = 1) -> Delivery:
    return Delivery(f"id-{n}", "celery", b"{}", 1, f"token-{n}")


def test_a_post_reads_back_and_an_empty_board_reads_nothing() -> None:
    board = Board()
    assert board.read() is None
    assert board.post(1, [("held", [("a",)])])
    assert board.read() == (1, [("held", [("a",)])])
    assert board.post(2, [("run", "a")]) and board.read() == (2, [("run", "a")])


def test_a_torn_block_reads_as_nothing() -> None:
    board = Board()
    board.post(1, [("held", ["x" * 100])])
    board._map[40] ^= 0xFF  # the child died (or is writing) mid-copy
    assert board.read() is None


def test_a_board_is_shared_across_fork() -> None:
    board = Board()
    pid = os.fork()
    if pid == 0:
        board.post(7, [("run", "from the child")])
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.read() == (7, [("run", "from the child")])


def test_a_start_is_posted_not_sent_and_the_next_flush_covers_it() -> None:
    sent: Reports = []
    board = Board()
    reporter = SlotReporter(sent.append, board)
    d = _delivery()
    reporter.held([d])
    reporter.running(d, "t", None)
    assert sent == []
    seq, posted = board.read() or (0, [])
    assert seq == 1 and [r[0] for r in posted] == ["held", "run"]
    reporter.done(d, Outcome(ACK, "SUCCESS"))
    reporter.flush()
    [reports] = sent
    assert reports[0] == ("covers", 1) and [r[0] for r in reports[1:]] == ["held", "run", "done"]
    reporter.held([_delivery(2)])
    reporter.flush()
    assert sent[1][0][0] == "held"  # nothing new on the board: no "covers"


@pytest.mark.parametrize("hard_limit, acked", [(5.0, False), (None, True)])
def test_a_hard_limit_or_an_early_ack_is_sent_at_once(hard_limit: float | None,
                                                     acked: bool) -> None:
    sent: Reports = []
    board = Board()
    reporter = SlotReporter(sent.append, board)
    d = _delivery()
    reporter.held([d])
    reporter.running(d, "t", hard_limit, acked=acked)
    assert [r[0] for r in sent[0]] == ["held", "run"] and board.read() is None


def test_a_start_after_a_finished_task_is_sent_at_once() -> None:
    """A "done" is acted on (ack, result) and may not be applied twice: never posted."""
    sent: Reports = []
    reporter = SlotReporter(sent.append, Board())
    first, second = _delivery(1), _delivery(2)
    reporter.held([first, second])
    reporter.running(first, "t", None)
    reporter.done(first, Outcome(ACK, "SUCCESS"))
    reporter.running(second, "t", None)
    [reports] = sent
    assert [r[0] for r in reports] == ["covers", "held", "run", "done", "run"]


def test_a_start_too_big_for_the_board_is_sent() -> None:
    sent: Reports = []
    reporter = SlotReporter(sent.append, Board(size=64))
    d = _delivery()
    reporter.held([d])
    reporter.running(d, "t", None)
    assert [r[0] for r in sent[0]] == ["held", "run"]


class _Pipe:
    def close(self) -> None:
        return None


@pytest.fixture
def pool() -> PreforkPool:
    return PreforkPool(Worker(make_test_app(), concurrency=1, pool="prefork"))


def _slot(pool: PreforkPool) -> tuple[Board, Reports, SlotReporter]:
    board = Board()
    pool.book.add_slot(0)
    pool.children[0] = _Child(None, _Pipe(), board)  # type: ignore[arg-type]
    sent: Reports = []
    return board, sent, SlotReporter(sent.append, board)


def test_the_supervisor_reads_what_a_child_runs_from_its_board(pool: PreforkPool) -> None:
    _, sent, reporter = _slot(pool)
    d = _delivery()
    reporter.held([d])
    reporter.running(d, "t", None)
    assert pool.book.running_tasks() == [] and sent == []
    pool.observe()
    [(key, running)] = pool.book.running_tasks()
    assert key == 0 and running.delivery == d and pool.book.all_held() == [d]
    events = pool.book.recorder.pending
    reporter.done(d, Outcome(ACK, "SUCCESS"))
    reporter.flush()
    pool.apply(0, sent[0])  # the pipe's copy of held and run changes nothing
    assert pool.book.running_tasks() == [] and pool.book.all_held() == []
    assert pool.book.recorder.pending == events + 1  # its "done" only: one STARTED event
    assert len(pool.acks) == 1


def test_a_board_the_pipe_overtook_is_not_applied(pool: PreforkPool) -> None:
    """Applying it would bring back a finished task: renewed, or handed back counted."""
    _, sent, reporter = _slot(pool)
    d = _delivery()
    reporter.held([d])
    reporter.running(d, "t", None)
    reporter.done(d, Outcome(ACK, "SUCCESS"))
    reporter.flush()
    pool.apply(0, sent[0])
    pool.observe()
    assert pool.book.running_tasks() == [] and pool.book.all_held() == []
    assert pool.book.recorder.pending == 2  # STARTED and SUCCEEDED, once each
