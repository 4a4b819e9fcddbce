"""The rate-limit gate (conveyor/worker/ratelimit.py) on the memory broker.

Real worker processes are in tests/faults/test_rate_limits.py; these pin the
decisions: who is limited, what is reserved when, and what costs nothing.
"""

from __future__ import annotations

import threading

import pytest

from conveyor import Conveyor, states
from conveyor.brokers.base import Delivery
from conveyor.exceptions import ConfigurationError
from conveyor.testing import run_worker
from conveyor.worker.ratelimit import GLOBAL_HORIZON, RateLimits


def delivery(n: int) -> Delivery:
    return Delivery(id=f"m{n}", queue="default", body=b"{}", deliveries=1, token="t")


def test_no_limits_means_no_wait(memory_url: str) -> None:
    """With no limit set the gate answers at once, and without taking a slot;
    with per-worker limits disabled and no global one there is no gate at all."""
    app = Conveyor("rl", broker=memory_url, set_as_current=False)
    app.task(lambda: None, name="plain")
    limits = RateLimits.for_app(app)
    assert limits is not None and limits.local == {}
    gate = limits.gate(lambda: app.broker)
    assert [gate.hold("plain", delivery(n)) for n in range(3)] == [0.0, 0.0, 0.0]
    app.conf.worker_disable_rate_limits = True
    assert RateLimits.for_app(app) is None


def test_a_limit_can_be_changed_while_running(memory_url: str) -> None:
    """What control.rate_limit does: the new interval applies to the next start."""
    app = Conveyor("rl", broker=memory_url, set_as_current=False)
    app.task(lambda: None, name="plain")
    limits = RateLimits.for_app(app)
    assert limits is not None
    gate = limits.gate(lambda: app.broker)
    assert limits.slots.set_interval("plain", 0.5)
    assert limits.local == {"plain": 0.5}
    assert gate.hold("plain", delivery(1)) == 0.0
    assert 0.4 < gate.hold("plain", delivery(2)) <= 0.5
    assert limits.slots.set_interval("plain", None)
    assert gate.hold("plain", delivery(3)) == 0.0
    assert not limits.slots.set_interval("not.registered", 1.0)


def test_default_rate_limit_applies_to_tasks_without_their_own(memory_url: str) -> None:
    """Celery: task_default_rate_limit is the rate_limit of tasks that set none."""
    app = Conveyor("rl", broker=memory_url, set_as_current=False,
                   task_default_rate_limit="10/s")
    app.task(lambda: None, name="plain")
    app.task(lambda: None, name="own", rate_limit="60/m")
    limits = RateLimits.for_app(app)
    assert limits is not None
    assert limits.local["plain"] == pytest.approx(0.1)
    assert limits.local["own"] == pytest.approx(1.0)
    # As in Celery (whose built-in tasks read the setting too), built-ins are limited.
    assert limits.local["conveyor.map"] == pytest.approx(0.1)


def test_disable_rate_limits_keeps_global_ones(memory_url: str) -> None:
    app = Conveyor("rl", broker=memory_url, set_as_current=False,
                   worker_disable_rate_limits=True)
    app.task(lambda: None, name="own", rate_limit="1/s", global_rate_limit="2/s")
    limits = RateLimits.for_app(app)
    assert limits is not None and limits.local == {} and limits.shared == {"own": 0.5}


def test_a_held_message_keeps_its_slot(memory_url: str) -> None:
    app = Conveyor("rl", broker=memory_url, set_as_current=False)
    app.task(lambda: None, name="own", rate_limit="2/s")
    limits = RateLimits.for_app(app)
    assert limits is not None
    gate = limits.gate(lambda: app.broker)
    assert gate.hold("own", delivery(1)) == 0.0
    first = gate.hold("own", delivery(2))
    assert 0.4 < first <= 0.5
    again = gate.hold("own", delivery(2))  # asked again: the same slot, not a new one
    assert 0 < again <= first
    assert 0.9 < gate.hold("own", delivery(3)) <= 1.0


def test_a_far_global_slot_is_not_taken(memory_url: str) -> None:
    """Beyond the horizon nothing is reserved: the gate says when to ask again."""
    app = Conveyor("rl", broker=memory_url, set_as_current=False)
    app.task(lambda: None, name="g", global_rate_limit="1/s")
    limits = RateLimits.for_app(app)
    assert limits is not None
    gate = limits.gate(lambda: app.broker)
    assert gate.hold("g", delivery(1)) == 0.0
    assert 0.9 < gate.hold("g", delivery(2)) <= GLOBAL_HORIZON  # taken: 1 s away
    retry = gate.hold("g", delivery(3))  # 2 s away: not taken
    assert 0.9 < retry <= 1.0
    wait = app.broker.take_rate_slot([("task:g", 1.0)], within=10)
    assert 1.9 < wait <= 2.0  # the slot message 3 was told about is still free


def test_bad_global_rate_limit_is_refused() -> None:
    app = Conveyor("rl", broker="memory://rl-bad", set_as_current=False)
    with pytest.raises(ConfigurationError, match="rate_limit 'often'"):
        app.task(lambda: None, name="bad", global_rate_limit="often")


def test_queue_global_limit_applies_to_every_task_of_the_queue(memory_url: str) -> None:
    app = Conveyor("rl", broker=memory_url, set_as_current=False,
                   queue_global_rate_limits={"emails": "60/m"})
    app.task(lambda: None, name="plain")
    limits = RateLimits.for_app(app)
    assert limits is not None and limits.queues == {"emails": 1.0}
    gate = limits.gate(lambda: app.broker)
    mail = [Delivery(id=f"e{n}", queue="emails", body=b"{}", deliveries=1, token="t")
            for n in range(2)]
    assert gate.hold("plain", mail[0]) == 0.0
    assert 0.9 < gate.hold("plain", mail[1]) <= 1.0
    assert gate.hold("plain", delivery(9)) == 0.0  # another queue: not limited


def test_bad_queue_limit_names_the_queue(memory_url: str) -> None:
    app = Conveyor("rl", broker=memory_url, set_as_current=False,
                   queue_global_rate_limits={"emails": "lots"})
    with pytest.raises(ConfigurationError, match=r"queue_global_rate_limits\['emails'\]"):
        RateLimits.for_app(app)


def test_a_message_revoked_while_held_does_not_run(memory_url: str) -> None:
    """Celery checks revocation when a held request leaves the bucket for the
    pool (worker/request.py execute_using_pool); so does the consumer."""
    app = Conveyor("rl", broker=memory_url, set_as_current=False)
    ran: list[int] = []
    first = threading.Event()

    @app.task(rate_limit="2/s")
    def limited(n: int) -> None:
        ran.append(n)
        first.set()

    with run_worker(app, concurrency=1) as worker:
        results = [limited.delay(n) for n in range(3)]
        assert first.wait(10)  # the batch is leased and two messages are held
        results[2].revoke()
        worker.join()
    assert ran == [0, 1]
    assert app.AsyncResult(results[2].id).state == states.REVOKED


def test_bad_default_rate_limit_names_the_setting(memory_url: str) -> None:
    app = Conveyor("rl", broker=memory_url, set_as_current=False,
                   task_default_rate_limit="fast")
    with pytest.raises(ConfigurationError, match="task_default_rate_limit: rate_limit 'fast'"):
        RateLimits.for_app(app)
