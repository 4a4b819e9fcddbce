"""The lease book keeps a kill and a task's return from crossing (issue 17).

The supervisor kills a task past its hard limit only through
``LeaseBook.claim``; a slot reports the moment its task function returned
through ``LeaseBook.returned``.  Whichever comes first wins, under one lock:
a task that returned is never killed (its result write is the worker's own
code), and a slot that returns after the kill learns it must end.
"""

from __future__ import annotations

import threading

from conveyor.brokers.base import Delivery
from conveyor.exceptions import TimeLimitExceeded
from conveyor.worker.book import LeaseBook


def running_book(hard_limit: float | None = 0.001) -> LeaseBook:
    book = LeaseBook()
    book.add_slot(0)
    book.held(0, [Delivery("m1", "default", b"{}", 1, "t")])
    book.running(0, "m1", "task", hard_limit)
    return book


def test_a_returned_task_has_no_deadline_and_cannot_be_claimed() -> None:
    book = running_book()
    [(_, running)] = book.running_tasks()
    assert book.returned(0, "m1") is True
    assert running.deadline is None and book.overdue() == []
    kills: list[int] = []
    assert not book.claim(0, running, TimeLimitExceeded("late"), lambda: kills.append(0))
    assert kills == [] and running.killed is None


def test_a_claimed_task_learns_it_was_killed_when_it_returns() -> None:
    book = running_book()
    [(_, running)] = book.running_tasks()
    kills: list[int] = []
    why = TimeLimitExceeded("hard time limit (1s) exceeded")
    assert book.claim(0, running, why, lambda: kills.append(0))
    assert kills == [0] and running.killed is why
    assert book.overdue() == [], "a task is killed once"
    assert book.returned(0, "m1") is False
    assert not book.claim(0, running, why, lambda: kills.append(1))
    assert kills == [0]


def test_the_kill_runs_under_the_lock_a_return_waits_for() -> None:
    """While ``kill`` runs, a return reported from another thread waits, then sees it."""
    book = running_book()
    [(_, running)] = book.running_tasks()
    answer: list[bool] = []
    returning = threading.Thread(target=lambda: answer.append(book.returned(0, "m1")))

    def kill() -> None:
        returning.start()
        returning.join(0.2)
        assert returning.is_alive(), "the return waited for the kill"

    assert book.claim(0, running, TimeLimitExceeded("x"), kill)
    returning.join(5)
    assert answer == [False]


def test_a_slot_given_up_ignores_late_reports() -> None:
    book = running_book(None)
    book.remove_slot(0)
    book.held(0, [Delivery("m2", "default", b"{}", 1, "t")])
    book.running(0, "m2", "task", None)
    assert book.returned(0, "m2") is False
    assert book.all_held() == [] and book.running_tasks() == []
