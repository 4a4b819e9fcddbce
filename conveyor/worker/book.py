"""The supervisor's ledger of what each slot (child process or thread) holds.

The supervisor (:mod:`conveyor.worker.supervisor`) owns it: it renews the
leases of everything held, enforces hard time limits, and knows exactly
which messages to hand back when a slot dies.
It is fed by reports (pipe messages from children, or direct calls from
threads) and never talks to the broker itself.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from conveyor._events import Recorder, TaskReport
from conveyor.brokers.base import Delivery


@dataclass
class Running:
    """The task a slot is running now."""

    delivery: Delivery
    task: str
    started: float
    deadline: float | None
    acked: bool = False  # acknowledged before it ran (acks_late=False): no lease to keep
    returned: bool = False  # the task function returned: no deadline, no kill
    killed: BaseException | None = None  # why the supervisor ended it (hard limit, terminate)


@dataclass
class Slot:
    """One child process or thread."""

    started: float = field(default_factory=time.monotonic)
    held: dict[str, Delivery] = field(default_factory=dict)
    running: Running | None = None
    retiring: bool = False  # told to stop after its task (shrink, recycle, shutdown)
    abandoned: bool = False  # ended by a cold shutdown: all it held goes back uncounted


class LeaseBook:
    """Thread-safe record of held and running deliveries per slot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.slots: dict[int, Slot] = {}
        self.counts: Counter[str] = Counter()
        self.task_counts: Counter[str] = Counter()  # finished runs per task name (inspect stats)
        self.recorder = Recorder()  # task events for the monitor, flushed per heartbeat

    def add_slot(self, key: int) -> None:
        with self._lock:
            self.slots[key] = Slot()

    def remove_slot(self, key: int) -> Slot | None:
        with self._lock:
            return self.slots.pop(key, None)

    def held(self, key: int, deliveries: list[Delivery]) -> None:
        with self._lock:
            slot = self.slots.get(key)
            if slot is None:  # a slot the supervisor already gave up (killed)
                return
            for d in deliveries:
                slot.held[d.id] = d

    def running(self, key: int, delivery_id: str, task: str, hard_limit: float | None,
                report: TaskReport | None = None, acked: bool = False,
                started: float | None = None) -> None:
        """A slot started a task at ``started`` (monotonic; default now); ``acked``:
        its message is already acknowledged, so it leaves the held set (no lease
        to renew, nothing to hand back).

        Told twice (a child's board, then its pipe: ADR 0039), the second time
        changes nothing and records no second event."""
        now = time.monotonic() if started is None else started
        with self._lock:
            slot = self.slots.get(key)
            if slot is not None and slot.running is not None \
                    and slot.running.delivery.id == delivery_id:
                return
            if report is not None:
                self.recorder.add(report)
            if slot is None:
                return
            delivery = slot.held.pop(delivery_id, None) if acked else slot.held.get(delivery_id)
            if delivery is None:
                return
            deadline = now + hard_limit if hard_limit else None
            slot.running = Running(delivery, task, now, deadline, acked)

    def done(self, key: int, delivery_id: str, state: str | None,
             report: TaskReport | None = None) -> Delivery | None:
        """Forget a finished delivery; returns it if it was held."""
        if report is not None:
            self.recorder.add(report)
        with self._lock:
            slot = self.slots.get(key)
            if slot is None:
                return None
            delivery = slot.held.pop(delivery_id, None)
            if slot.running is not None and slot.running.delivery.id == delivery_id:
                self.task_counts[slot.running.task] += 1
                slot.running = None
            if state:
                self.counts[state] += 1
            return delivery

    def returned(self, key: int, delivery_id: str) -> bool:
        """The task function returned: its hard deadline ends now.

        False when the supervisor claimed the task first (:meth:`claim`): it
        is being killed and its outcome is the supervisor's to record.
        """
        with self._lock:
            slot = self.slots.get(key)
            running = slot.running if slot is not None else None
            if running is None or running.delivery.id != delivery_id:
                return slot is not None
            running.returned, running.deadline = True, None
            return running.killed is None

    def claim(self, key: int, running: Running, why: BaseException,
              kill: Callable[[], None]) -> bool:
        """Kill a slot's task unless it returned: ``kill`` runs under the lock
        :meth:`returned` takes, so the two cannot cross."""
        with self._lock:
            slot = self.slots.get(key)
            if slot is None or slot.running is not running or running.returned or running.killed:
                return False
            running.killed = why
            kill()
            return True

    def all_held(self) -> list[Delivery]:
        with self._lock:
            return [d for slot in self.slots.values() for d in slot.held.values()]

    def overdue(self) -> list[tuple[int, Running]]:
        """Slots whose running task passed its hard time limit."""
        now = time.monotonic()
        with self._lock:
            return [
                (key, slot.running)
                for key, slot in self.slots.items()
                if slot.running and slot.running.deadline and slot.running.deadline < now
                and not slot.running.killed
            ]

    def running_tasks(self) -> list[tuple[int, Running]]:
        with self._lock:
            return [(k, s.running) for k, s in self.slots.items() if s.running is not None]
