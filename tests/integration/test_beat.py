"""Beat: each tick fires exactly once, whoever leads, across failovers and restarts.

Two kinds of test.  Loop tests drive :class:`conveyor.beat.Beat` by hand with
a fake clock (the in-memory broker's lease reads the same clock), so hours of
schedule and any interleaving of two beats take milliseconds.  Process tests
start real ``python -m conveyor beat`` processes on SQLite and Redis with a
one-second schedule and a two-second lease, kill (or freeze) the leader twice,
and count the ticks in the queue: every second exactly once, none missing.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor._message import Message
from conveyor.beat import (
    BEAT_LEASE,
    MAX_CATCH_UP,
    Beat,
    SettingsScheduler,
    beat_status,
    load_scheduler,
    plan_ticks,
    run_embedded,
    task_id_for,
    tick_key,
)
from conveyor.beat_state import open_beat_state
from conveyor.brokers import Broker, broker_from_url
from conveyor.brokers import memory as memory_broker
from conveyor.exceptions import BrokerUnavailable, ConfigurationError
from conveyor.scheduler import Entry, Scheduler
from conveyor.schedules import crontab, schedule
from tests.conftest import REDIS_PORT
from tests.integration.processes import ROOT, wait_for

UTC = timezone.utc
QUEUE = "beat-test"
START = datetime(2024, 1, 1, 12, 0, 0, 500000, tzinfo=UTC)
# The process tests: a two-second lease, so failovers fit in a short test.
LEASE = 2.0
LOOP = 1.0
ISOLATED_REDIS_DB = 12
URL_FIXTURES = {"memory": "memory_url", "sqlite": "sqlite_url", "redis": "isolated_redis_url",
                "amqp": "amqp_url"}
HOLDER_PID = re.compile(r":(\d+):[0-9a-f]+$")


# --------------------------------------------------------------------------- helpers


class Killed(BaseException):
    """A process dying at this point (nothing in beat catches it)."""


class FakeClock:
    """Wall clock and monotonic clock that move only when told to."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._now.timestamp()

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock that the in-memory broker's leases and key TTLs also read."""
    fake = FakeClock()
    monkeypatch.setattr(memory_broker, "time", SimpleNamespace(
        time=fake.time, monotonic=time.monotonic, sleep=time.sleep))
    return fake


def every(seconds: float, **extra: Any) -> dict[str, Any]:
    return {"task": "beat_tests.tick", "schedule": seconds, "options": {"queue": QUEUE}, **extra}


def make_app(url: str, schedule_: dict[str, Any] | None = None, **settings: Any) -> Conveyor:
    conf: dict[str, Any] = {"beat_lease_timeout": 10.0, "beat_max_loop_interval": 5.0,
                            "beat_schedule": schedule_ or {"tick": every(10)}}
    conf.update(settings)
    return Conveyor("beat_tests", broker=url, set_as_current=False, **conf)


def make_beat(url: str, clock: FakeClock, holder: str, schedule_: dict[str, Any] | None = None,
              **settings: Any) -> Beat:
    return Beat(make_app(url, schedule_, **settings), holder=holder, clock=clock)


def run_for(beats: list[Beat], clock: FakeClock, seconds: float, step: float = 1.0) -> None:
    for _ in range(round(seconds / step)):
        for beat in beats:
            beat.tick()
        clock.advance(step)


def drain(broker: Broker, queue: str = QUEUE) -> list[Message]:
    out: list[Message] = []
    while True:
        got = broker.reserve([queue], 500, lease=600, timeout=0)
        if not got:
            return out
        broker.ack(got)
        out.extend(Message.decode(d.body, ["json"]) for d in got)


def ticks_of(messages: list[Message]) -> list[datetime]:
    return [datetime.fromisoformat(m.headers["beat_tick"]) for m in messages]


def at(seconds: float) -> datetime:
    """START's minute plus ``seconds``: where a 10 s grid's ticks fall."""
    return START.replace(microsecond=0) + timedelta(seconds=seconds)


def grid(first: datetime, last: datetime, step: float) -> list[datetime]:
    out, tick = [], first
    while tick <= last:
        out.append(tick)
        tick += timedelta(seconds=step)
    return out


def assert_exactly_once(ticks: list[datetime], step: float) -> list[datetime]:
    """No tick twice and none missing between the first and the last; returns them sorted."""
    repeated = [t for t, n in Counter(ticks).items() if n > 1]
    assert not repeated, f"ticks sent more than once: {repeated}"
    ordered = sorted(ticks)
    missing = sorted(set(grid(ordered[0], ordered[-1], step)) - set(ordered))
    assert not missing, f"ticks never sent: {missing}"
    return ordered


# --------------------------------------------------------------------------- planning


def test_a_new_interval_entry_starts_on_the_epoch_grid_at_its_next_tick() -> None:
    now = datetime(2024, 1, 1, 12, 0, 7, tzinfo=UTC)
    plan = plan_ticks(schedule(300), last=None, now=now, cutoff=now,
                      window=timedelta(seconds=25))
    assert plan.send == ()
    assert plan.wake == datetime(2024, 1, 1, 12, 5, tzinfo=UTC)
    # Another process looking a little later agrees on the same tick, and sends it.
    later = plan_ticks(schedule(300), last=None, now=now + timedelta(minutes=5, seconds=3),
                       cutoff=now, window=timedelta(seconds=25))
    assert later.send == (datetime(2024, 1, 1, 12, 5, tzinfo=UTC),)


def test_ticks_count_from_the_last_run_not_from_now() -> None:
    last = datetime(2024, 1, 1, 12, 0, 3, 250000, tzinfo=UTC)
    plan = plan_ticks(schedule(10), last=last, now=last + timedelta(seconds=25),
                      cutoff=None, window=timedelta(seconds=60))
    assert plan.send == (last + timedelta(seconds=10), last + timedelta(seconds=20))
    assert plan.wake == last + timedelta(seconds=30)


@pytest.mark.parametrize(("policy", "expected"), [
    ("once", [timedelta(minutes=60)]),
    ("skip", []),
    ("all", [timedelta(minutes=m) for m in range(1, 61)]),
])
def test_missed_tick_policies(policy: str, expected: list[timedelta]) -> None:
    last = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    now = last + timedelta(hours=1, seconds=30)
    plan = plan_ticks(schedule(60), last=last, now=now, cutoff=now, policy=policy,
                      window=timedelta(seconds=25))
    assert list(plan.send) == [last + d for d in expected]
    assert plan.dropped is (policy != "all")
    assert plan.wake == last + timedelta(minutes=61)


def test_policy_all_is_capped_and_keeps_the_latest_ticks() -> None:
    last = datetime(2024, 1, 1, tzinfo=UTC)
    now = last + timedelta(hours=5)
    plan = plan_ticks(crontab(minute="*"), last=last, now=now, cutoff=now, policy="all",
                      window=timedelta(seconds=25))
    assert len(plan.send) == MAX_CATCH_UP
    assert plan.send[-1] == now and plan.dropped
    # A week of one-second ticks is arithmetic, not a loop over 604,800 ticks.
    plan = plan_ticks(schedule(1), last=last, now=last + timedelta(days=7), cutoff=None,
                      policy="all", window=timedelta(seconds=25))
    assert len(plan.send) == MAX_CATCH_UP and plan.send[-1] == last + timedelta(days=7)


def test_ticks_after_the_cutoff_are_not_missed_ones() -> None:
    # Beat was down, came back at ``cutoff``, then failed over: ticks after the
    # cutoff all run, whatever the policy.
    last = datetime(2024, 1, 1, tzinfo=UTC)
    cutoff = last + timedelta(minutes=30, seconds=5)
    now = cutoff + timedelta(seconds=31)
    for policy in ("once", "skip"):
        plan = plan_ticks(schedule(10), last=last, now=now, cutoff=cutoff, policy=policy,
                          window=timedelta(seconds=60))
        assert plan.send == tuple(cutoff + timedelta(seconds=s) for s in (5, 15, 25))


@pytest.mark.parametrize(("policy", "sent"), [("once", 1), ("skip", 0), ("all", 30)])
def test_an_entry_that_was_off_for_a_month_is_not_a_burst(policy: str, sent: int) -> None:
    # No outage was recorded (beat ran throughout), but the entry was disabled:
    # ticks older than the failover window are missed ones all the same.
    last = datetime(2024, 1, 1, 8, tzinfo=UTC)
    now = datetime(2024, 1, 31, 9, tzinfo=UTC)
    plan = plan_ticks(crontab(minute=0, hour=8), last=last, now=now, cutoff=None,
                      policy=policy, window=timedelta(seconds=25))
    assert len(plan.send) == sent
    assert not plan.send or plan.send[-1] == datetime(2024, 1, 31, 8, tzinfo=UTC)
    assert plan.wake == datetime(2024, 2, 1, 8, tzinfo=UTC)


def test_start_time_and_expires_bound_the_ticks() -> None:
    start = datetime(2024, 1, 1, 12, 0, 5, tzinfo=UTC)
    plan = plan_ticks(schedule(60), last=None, now=start - timedelta(hours=1),
                      cutoff=None, window=timedelta(seconds=25), start_time=start)
    assert plan.wake == start
    plan = plan_ticks(schedule(60), last=None, now=start + timedelta(seconds=1), cutoff=None,
                      window=timedelta(seconds=25), start_time=start)
    assert plan.send == (start,)
    plan = plan_ticks(crontab(minute="*"), last=start, now=start + timedelta(minutes=3),
                      cutoff=None, window=timedelta(minutes=5),
                      expires=start + timedelta(minutes=2))
    assert plan.send == (datetime(2024, 1, 1, 12, 1, tzinfo=UTC),
                         datetime(2024, 1, 1, 12, 2, tzinfo=UTC))
    assert plan.wake is None


def test_tick_identity_is_in_utc_whatever_the_zone() -> None:
    from zoneinfo import ZoneInfo

    kathmandu = datetime(2024, 1, 1, 9, 0, tzinfo=ZoneInfo("Asia/Kathmandu"))
    assert tick_key("digest", kathmandu) == "beat:digest:2024-01-01T03:15:00+00:00"
    assert task_id_for(tick_key("digest", kathmandu)) == task_id_for(
        "beat:digest:2024-01-01T03:15:00+00:00")
    assert uuid.UUID(task_id_for("x")).version == 5


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("spec", "message"), [
    ({"task": "t"}, "beat_schedule['bad']: missing key 'schedule'"),
    ({"schedule": 5}, "beat_schedule['bad']['task'] must be the task's name"),
    ({"task": "t", "schedule": 5, "arg": [1]}, "beat_schedule['bad']: unknown key 'arg'"),
    ({"task": "t", "schedule": "5"}, "beat_schedule['bad']['schedule']: cannot use '5'"),
    ({"task": "t", "schedule": crontab}, "beat_schedule['bad']['schedule']"),
    ({"task": "t", "schedule": -1.0}, "beat_schedule['bad']['schedule']: run_every must be"),
    ({"task": "t", "schedule": 5, "args": "abc"}, "beat_schedule['bad']['args'] must be a list"),
    ({"task": "t", "schedule": 5, "kwargs": [1]}, "beat_schedule['bad']['kwargs'] must be a dict"),
    ({"task": "t", "schedule": 5, "options": {"queeu": "x"}},
     "beat_schedule['bad']['options']: unknown option 'queeu'"),
    ({"task": "t", "schedule": 5, "options": {"task_id": "x"}},
     "beat_schedule['bad']['options']: unknown option 'task_id'"),
    ({"task": "t", "schedule": 5, "args": [object()]},
     "beat_schedule['bad']: positional argument 0"),
    ({"task": "t", "schedule": 5, "options": {"priority": 42}}, "beat_schedule['bad']: priority"),
    ("t", "beat_schedule['bad'] must be a dict"),
])
def test_a_bad_entry_names_the_entry_and_the_key(memory_url: str, spec: object,
                                                 message: str) -> None:
    app = make_app(memory_url, {"good": every(5), "bad": spec})
    with pytest.raises(ConfigurationError) as caught:
        SettingsScheduler(app).load()
    assert message in str(caught.value)


def test_celery_style_entries_load(memory_url: str) -> None:
    app = make_app(memory_url, {
        "digest": {"task": "news.digest", "schedule": crontab(hour=8, minute=0),
                   "args": (1,), "kwargs": {"k": "v"}, "options": {"expires": 60, "queue": "q"}},
        "sync": {"task": "inventory.sync", "schedule": 300.0, "relative": False},
        "daily": {"task": "x.y", "schedule": timedelta(days=1)},
    }, timezone="Asia/Kathmandu")
    entries = {e.name: e for e in SettingsScheduler(app).load()}
    assert entries["digest"].args == (1,) and entries["digest"].kwargs == {"k": "v"}
    assert entries["digest"].options == {"expires": 60, "queue": "q"}
    digest = entries["digest"].schedule
    assert isinstance(digest, crontab) and digest.tz.key == "Asia/Kathmandu"
    assert digest.next_run(datetime(2024, 1, 1, tzinfo=UTC)).hour == 8
    assert entries["sync"].schedule == schedule(300)
    assert entries["daily"].schedule == schedule(86400)


def test_an_unknown_timezone_is_a_configuration_error(memory_url: str) -> None:
    with pytest.raises(ConfigurationError, match="Mars/Base"):
        Beat(make_app(memory_url, timezone="Mars/Base"))


# --------------------------------------------------------------------------- the loop


def test_only_the_leader_sends_and_each_tick_once(memory_url: str, clock: FakeClock) -> None:
    a = make_beat(memory_url, clock, "a")
    b = make_beat(memory_url, clock, "b")
    run_for([a, b, make_beat(memory_url, clock, "c")], clock, 121)
    messages = drain(a.app.broker)
    assert ticks_of(messages) == grid(at(10), at(120), 10)
    assert {m.headers["beat_by"] for m in messages} == {"a"}
    assert a.is_leader and not b.is_leader
    first = messages[0]
    key = tick_key("tick", at(10))
    assert (first.id, first.task, first.queue) == (task_id_for(key), "beat_tests.tick", QUEUE)
    assert first.headers["beat_entry"] == "tick"


def test_a_standby_takes_over_and_sends_the_gap_late_never_twice(
        memory_url: str, clock: FakeClock) -> None:
    a = make_beat(memory_url, clock, "a")
    b = make_beat(memory_url, clock, "b")
    run_for([a, b], clock, 35)
    # a sends the 40 s tick, then dies before recording it.
    def die(entry: Entry, run_at: datetime) -> None:
        raise Killed

    a.scheduler.record_run = die  # type: ignore[method-assign]
    clock.advance(5)
    with pytest.raises(Killed):
        a.tick()
    taken_over_at = None
    for _ in range(40):
        b.tick()
        if b.is_leader and taken_over_at is None:
            taken_over_at = clock.now()
        clock.advance(1)
    messages = drain(a.app.broker)
    ticks = assert_exactly_once(ticks_of(messages), 10)
    assert ticks == grid(at(10), at(70), 10)
    by = {datetime.fromisoformat(m.headers["beat_tick"]): m.headers["beat_by"] for m in messages}
    assert by[at(40)] == "a"  # b's resend of it was refused by the broker
    assert {by[at(50)], by[at(60)]} == {"b"}
    assert taken_over_at is not None
    assert taken_over_at - at(40.5) <= timedelta(seconds=10 + 10 / 3 + 1)


def test_a_paused_leader_checks_its_lease_before_sending(
        memory_url: str, clock: FakeClock) -> None:
    a = make_beat(memory_url, clock, "a")
    b = make_beat(memory_url, clock, "b")
    run_for([a, b], clock, 35)
    sent_by_a: list[str] = []
    real_send = a.app.send_task
    a.app.send_task = lambda *args, **kw: sent_by_a.append(kw["idempotency_key"]) or real_send(
        *args, **kw)  # type: ignore[method-assign]
    real_last_run = a.scheduler.last_run

    def read_then_freeze(name: str) -> datetime | None:
        value = real_last_run(name)
        clock.advance(15)  # SIGSTOP: the lease runs out and b takes over meanwhile
        b.tick()
        return value

    a.scheduler.last_run = read_then_freeze  # type: ignore[method-assign]
    clock.advance(5)
    a.tick()  # plans the 40 s tick from what it read before the pause, then checks its lease
    assert sent_by_a == [] and b.is_leader
    a.scheduler.last_run = real_last_run  # type: ignore[method-assign]
    run_for([a, b], clock, 20)
    assert not a.is_leader and sent_by_a == []
    messages = drain(a.app.broker)
    assert assert_exactly_once(ticks_of(messages), 10)[-1] == at(70)
    assert {m.headers["beat_by"] for m in messages if ticks_of([m])[0] >= at(40)} == {"b"}


def test_the_idempotency_key_fences_a_send_that_slipped_past_the_lease_check(
        memory_url: str, clock: FakeClock) -> None:
    a = make_beat(memory_url, clock, "a")
    b = make_beat(memory_url, clock, "b")
    run_for([a, b], clock, 35)
    real_send = a.app.send_task

    def frozen_mid_send(*args: Any, **kw: Any) -> Any:
        clock.advance(15)  # paused after the lease check, before the broker call
        b.tick()
        return real_send(*args, **kw)

    a.app.send_task = frozen_mid_send  # type: ignore[method-assign]
    clock.advance(5)
    a.tick()
    a.app.send_task = real_send  # type: ignore[method-assign]
    run_for([a, b], clock, 20)
    messages = drain(a.app.broker)
    assert assert_exactly_once(ticks_of(messages), 10) == grid(at(10), at(70), 10)
    # The late record by a did not move history back.
    assert b.scheduler.last_run("tick") == at(70)


@pytest.mark.parametrize("kind", ["sqlite_url", "pg_url", "amqp_url"])
def test_restart_neither_repeats_nor_forgets(kind: str, request: pytest.FixtureRequest,
                                             clock: FakeClock) -> None:
    url = str(request.getfixturevalue(kind))  # a broker that outlives the process
    first = make_beat(url, clock, "first")
    run_for([first], clock, 60)
    first.close()
    clock.advance(12)  # a restart shorter than the failover window (25 s)
    second = make_beat(url, clock, "second")
    run_for([second], clock, 60)
    second.close()
    reader = broker_from_url(url)
    try:
        messages = drain(reader)
    finally:
        # Closed, not left to the garbage collector: on RabbitMQ an open reader keeps its
        # consumer, which would take (and hold) the next test's messages in this vhost.
        reader.close()
    assert assert_exactly_once(ticks_of(messages), 10) == grid(at(10), at(130), 10)
    runs = open_beat_state(second.app).runs()
    assert runs["tick"].last_run_at == at(130) and runs["tick"].total_run_count == 13


@pytest.mark.parametrize(("policy", "catch_up"), [("once", 1), ("skip", 0), ("all", 60)])
def test_missed_ticks_after_an_outage_follow_the_policy(
        memory_url: str, clock: FakeClock, policy: str, catch_up: int,
        caplog: pytest.LogCaptureFixture) -> None:
    schedule_ = {"minutely": every(60)}
    before = make_beat(memory_url, clock, "before", schedule_, beat_missed_policy=policy)
    run_for([before], clock, 181)
    before.close()
    broker = before.app.broker
    assert len(drain(broker)) == 3
    clock.advance(3600)  # nobody runs beat for an hour
    after = make_beat(memory_url, clock, "after", schedule_, beat_missed_policy=policy)
    with caplog.at_level(logging.INFO, "conveyor.beat"):
        after.tick()
    outage = drain(broker)
    assert len(outage) == catch_up
    if catch_up:
        assert ticks_of(outage)[-1] == at(3780)  # the latest missed tick
    assert "no beat ran since" in caplog.text
    run_for([after], clock, 185)
    resumed = ticks_of(drain(broker))
    assert resumed == grid(at(3840), at(3960), 60)


def test_a_crontab_follows_the_app_timezone_and_dst(memory_url: str, clock: FakeClock) -> None:
    # Europe/Berlin springs forward on 2024-03-31 (02:00 -> 03:00) and falls back
    # on 2024-10-27 (03:00 -> 02:00).  Whatever the schedule's DST rule decides
    # (docs/periodic.md), beat sends exactly its ticks: none skipped, none doubled.
    sched = {"half-past": {"task": "t", "schedule": crontab(minute=30),
                           "options": {"queue": QUEUE}},
             "nine": {"task": "t", "schedule": crontab(minute=0, hour=9),
                      "options": {"queue": QUEUE}}}
    for night in (datetime(2024, 3, 30, 22, tzinfo=UTC), datetime(2024, 10, 26, 22, tzinfo=UTC)):
        fresh = FakeClock(night)
        clock.__dict__.update(fresh.__dict__)
        url = f"{memory_url}-{night.month}"
        beat = make_beat(url, clock, "dst", sched, timezone="Europe/Berlin",
                         beat_lease_timeout=600, beat_max_loop_interval=60)
        run_for([beat], clock, 14 * 3600, step=60)
        by_entry: dict[str, list[datetime]] = {}
        for message in drain(beat.app.broker):
            by_entry.setdefault(message.headers["beat_entry"], []).append(ticks_of([message])[0])
        entry = crontab(minute=30, tz="Europe/Berlin")
        expected = [t.astimezone(UTC) for t in entry.ticks_between(night, clock.now())]
        assert by_entry["half-past"] == expected
        local = [t.astimezone(entry.tz).strftime("%H:%M") for t in expected]
        assert len(local) == len(set(local)), f"a wall-clock time ran twice: {local}"
        nine = by_entry["nine"]
        assert len(nine) == 1 and nine[0].astimezone(entry.tz).hour == 9


def test_kathmandu_nine_oclock_is_three_fifteen_utc(memory_url: str, clock: FakeClock) -> None:
    sched = {"digest": {"task": "t", "schedule": crontab(minute=0, hour=9),
                        "options": {"queue": QUEUE}}}
    beat = make_beat(memory_url, clock, "k", sched, timezone="Asia/Kathmandu",
                     beat_lease_timeout=3600, beat_max_loop_interval=300)
    run_for([beat], clock, 24 * 3600, step=300)
    [message] = drain(beat.app.broker)
    assert message.headers["beat_tick"] == "2024-01-02T03:15:00+00:00"


def test_a_new_entry_first_runs_at_its_next_tick(memory_url: str, clock: FakeClock) -> None:
    clock.advance(20 * 60)  # 12:20
    sched = {"hourly": {"task": "t", "schedule": crontab(minute=0), "options": {"queue": QUEUE}}}
    beat = make_beat(memory_url, clock, "n", sched, beat_lease_timeout=60)
    run_for([beat], clock, 39 * 60, step=30)
    assert drain(beat.app.broker) == []
    run_for([beat], clock, 120, step=30)
    assert [m.headers["beat_tick"] for m in drain(beat.app.broker)] == [
        "2024-01-01T13:00:00+00:00"]


def test_sleep_is_until_the_next_tick_but_short_enough_to_renew(
        memory_url: str, clock: FakeClock) -> None:
    beat = make_beat(memory_url, clock, "s", {"t": every(60)})
    assert beat.tick() == pytest.approx(10 / 3)  # renew every third of the lease
    standby = make_beat(memory_url, clock, "t", {"t": every(60)})
    assert standby.tick() == pytest.approx(10 / 3)
    run_for([beat, standby], clock, 59)
    clock.advance(0.4)  # 12:00:59.9, the tick at 12:01 is 0.1 s away
    assert beat.tick() == pytest.approx(0.1)


def test_a_broker_error_retries_the_tick_and_a_bad_message_is_skipped(
        memory_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    beat = make_beat(memory_url, clock, "e")
    run_for([beat], clock, 10)
    broker = beat.app.broker
    real_enqueue = broker.enqueue

    def down(envelope: Any) -> str:
        raise BrokerUnavailable("Redis at nowhere is unavailable")

    broker.enqueue = down  # type: ignore[method-assign]
    with pytest.raises(BrokerUnavailable):
        beat.tick()
    assert beat.scheduler.last_run("tick") is None
    broker.enqueue = real_enqueue  # type: ignore[method-assign]
    beat.tick()
    assert ticks_of(drain(broker)) == [at(10)]
    beat.close()
    # A message that cannot be built fails the same way every time: logged, skipped.
    ChangingScheduler.runs = {}
    ChangingScheduler.entries = [
        Entry("odd", "t", schedule(10), args=(object(),), options={"queue": QUEUE})]
    app = make_app(memory_url)
    odd = Beat(app, ChangingScheduler(app), holder="odd", clock=clock)
    with caplog.at_level(logging.ERROR, "conveyor.beat"):
        run_for([odd], clock, 12)
    assert "cannot send t for tick beat:odd:2024-01-01T12:00:20+00:00" in caplog.text
    assert ChangingScheduler.runs == {"odd": at(20)}  # skipped, not retried every pass
    assert drain(broker) == []


# --------------------------------------------------------------------------- plug-ins


class ChangingScheduler(Scheduler):
    """Entries that an admin edits while beat runs (what the Django scheduler does)."""

    refresh_interval = 0.0
    entries: list[Entry] = []
    runs: dict[str, datetime] = {}

    def load(self) -> list[Entry]:
        return list(self.entries)

    def last_run(self, name: str) -> datetime | None:
        return self.runs.get(name)

    def record_run(self, entry: Entry, run_at: datetime) -> None:
        self.runs[entry.name] = run_at


def test_entries_from_a_plug_in_can_change_while_beat_runs(
        memory_url: str, clock: FakeClock) -> None:
    app = make_app(memory_url, beat_scheduler="tests.integration.test_beat:ChangingScheduler")
    scheduler = load_scheduler(app)
    assert isinstance(scheduler, ChangingScheduler)
    ChangingScheduler.runs = {}
    ChangingScheduler.entries = [Entry("a", "t", schedule(10), options={"queue": QUEUE})]
    beat = Beat(app, scheduler, holder="p", clock=clock)
    run_for([beat], clock, 30)
    ChangingScheduler.entries = [
        Entry("a", "t", schedule(10), options={"queue": QUEUE}, enabled=False),
        Entry("b", "t", crontab(minute="*"), options={"queue": QUEUE}),
    ]
    run_for([beat], clock, 60)
    names = Counter(m.headers["beat_entry"] for m in drain(app.broker))
    assert names == {"a": 2, "b": 1}


@pytest.mark.parametrize(("path", "message"), [
    ("tests.integration.nowhere:Scheduler", "cannot be imported"),
    ("tests.integration.test_beat:FakeClock", "not a conveyor.scheduler.Scheduler subclass"),
])
def test_a_bad_scheduler_path_is_a_configuration_error(memory_url: str, path: str,
                                                       message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_scheduler(make_app(memory_url), path)


def test_celery_scheduler_names_map_onto_conveyors(memory_url: str) -> None:
    scheduler = load_scheduler(make_app(memory_url), "celery.beat:PersistentScheduler")
    assert isinstance(scheduler, SettingsScheduler)


def test_beat_status_for_the_schedules_page(memory_url: str, clock: FakeClock) -> None:
    beat = make_beat(memory_url, clock, "status-holder",
                     {"tick": every(10), "digest": {"task": "d", "schedule": crontab(0, 9)}})
    run_for([beat], clock, 25)
    status = beat_status(beat.app, now=clock.now())
    assert status["holder"] == "status-holder" and status["lease"] == BEAT_LEASE
    assert status["missed_policy"] == "once" and status["timezone"] == "UTC"
    entries = {e["name"]: e for e in status["entries"]}
    assert entries["tick"]["last_run_at"] == at(20).isoformat()
    assert entries["tick"]["next_run"] == at(30).isoformat()
    assert entries["tick"]["total_run_count"] == 2
    assert entries["digest"]["last_run_at"] is None
    assert entries["digest"]["next_run"] == "2024-01-02T09:00:00+00:00"
    assert entries["digest"]["schedule"] == "crontab(minute='0', hour='9')"
    beat.close()
    assert beat_status(beat.app)["holder"] is None


class PlugInScheduler(ChangingScheduler):
    """A scheduler named by ``--scheduler`` only, never by the settings."""

    entries = [Entry("from-plug-in", "tasks.plugged", schedule(30))]


@pytest.mark.parametrize("kind", ["memory_url", "sqlite_url", "prefixed", "pg_url", "amqp_url"])
def test_beat_status_reports_the_scheduler_beat_runs_not_the_configured_one(
        kind: str, request: pytest.FixtureRequest, clock: FakeClock) -> None:
    """Issue 16: a beat started with ``--scheduler`` was shown as the settings
    scheduler with the settings' entries.  The leader notes its scheduler's
    path in the beat state; the monitor's status loads that one."""
    url = str(request.getfixturevalue(kind))
    app = make_app(url, {"from-settings": every(10)})
    assert beat_status(app)["scheduler_from"] == "settings"
    beat = Beat(app, PlugInScheduler(app), holder="plug-in", clock=clock)
    run_for([beat], clock, 2)
    status = beat_status(make_app(url, {"from-settings": every(10)}), now=clock.now())
    assert status["scheduler"] == "PlugInScheduler"
    assert status["scheduler_path"] == "tests.integration.test_beat:PlugInScheduler"
    assert status["scheduler_from"] == "running beat"
    assert [e["name"] for e in status["entries"]] == ["from-plug-in"]
    beat.close()


def test_first_leader_log_says_no_beat_ran_before(
        memory_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="conveyor")
    beat = make_beat(memory_url, clock, "first")
    run_for([beat], clock, 1)
    assert any("no beat ran before" in r.getMessage() for r in caplog.records)
    assert not any("since never" in r.getMessage() for r in caplog.records)
    beat.close()


def test_run_embedded_sends_from_a_thread_under_the_same_lease(memory_url: str) -> None:
    app = make_app(memory_url, {"fast": every(0.2)}, beat_lease_timeout=1.0,
                   beat_max_loop_interval=0.2)
    other = Beat(make_app(memory_url, {"fast": every(0.2)}), holder="other")
    beat = run_embedded(app)
    sent: list[Message] = []
    try:
        wait_for(lambda: sent.extend(drain(app.broker)) or len(sent) >= 4, 5, "four ticks")
        assert other.tick() and not other.is_leader  # the embedded beat holds the lease
        assert beat.thread is not None and beat.thread.daemon and beat.is_leader
    finally:
        beat.shutdown()
    assert app.broker.lease_holder(BEAT_LEASE) is None
    assert not beat.thread.is_alive()
    assert_exactly_once(ticks_of(sent + drain(app.broker)), 0.2)


# The history store's own properties (only forward, exact times, shared) are the
# beat-state contract: tests/contract/beat_state_contract.py, run on every store.


# --------------------------------------------------------------------------- real processes



class BeatFleet:
    """Real beat processes on one broker, and what they sent."""

    def __init__(self, url: str, logs: Path, **settings: Any) -> None:
        self.url = url
        self.logs = logs
        self.broker = broker_from_url(url)
        self.env = dict(os.environ)
        self.env.update({"CONVEYOR_BROKER_URL": url, "PYTHONPATH": str(ROOT),
                         "CONVEYOR_BEAT_LEASE_TIMEOUT": str(LEASE),
                         "CONVEYOR_BEAT_MAX_LOOP_INTERVAL": str(LOOP),
                         "BEAT_TEST_INTERVAL": "1", "BEAT_TEST_QUEUE": QUEUE})
        self.env.update({f"CONVEYOR_{k.upper()}": str(v) for k, v in settings.items()})
        self.procs: list[subprocess.Popen[bytes]] = []
        self.takeovers: list[float] = []

    def start(self, *args: str, command: str = "beat") -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{command}-{len(self.procs)}.log", "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "conveyor", "-A", "tests.integration.beat_app", command,
               "-l", "INFO", *args]
        proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def holder(self) -> str | None:
        return self.broker.lease_holder(BEAT_LEASE)

    def leader(self, timeout: float = 10.0, other_than: str | None = None) -> str:
        wait_for(lambda: self.holder() not in (None, other_than), timeout, "a beat leader")
        holder = self.holder()
        assert holder is not None
        return holder

    def process_of(self, holder: str) -> subprocess.Popen[bytes]:
        match = HOLDER_PID.search(holder)
        assert match, holder
        [proc] = [p for p in self.procs if p.pid == int(match.group(1))]
        return proc

    def kill_leader(self, sig: int = signal.SIGKILL) -> tuple[str, subprocess.Popen[bytes]]:
        """Kill (or freeze) the leader; returns its holder id once another one leads."""
        old = self.leader()
        proc = self.process_of(old)
        began = time.monotonic()
        proc.send_signal(sig)
        self.leader(timeout=4 * LEASE, other_than=old)
        self.takeovers.append(time.monotonic() - began)
        return old, proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def sent(self) -> list[Message]:
        return drain(self.broker)

    def close(self) -> None:
        """Close the fleet's own broker.  On RabbitMQ a reader left open keeps its
        consumer, and RabbitMQ pushes it (up to its prefetch) what later tests in this
        vhost send, where no one reads it: their queue looks empty."""
        self.broker.close()

    def send_attempts(self) -> int:
        return sum(p.read_text().count("beat sent tick") for p in self.logs.glob("*.log"))


@pytest.fixture
def isolated_redis_url(redis_url: str) -> Iterator[str]:
    """Redis in a database and key prefix of this test's own.

    Other suites on a shared server FLUSHDB the standard test database, which
    would wipe the lease and the queue in the middle of a twenty-second run.
    """
    import redis

    prefix = f"beat-test-{uuid.uuid4().hex[:8]}"
    yield f"redis://127.0.0.1:{REDIS_PORT}/{ISOLATED_REDIS_DB}?prefix={prefix}"
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=ISOLATED_REDIS_DB)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def fleet_logs(tmp_path: Path) -> Iterator[Path]:
    logs = tmp_path / "logs"
    logs.mkdir()
    yield logs


def describe(label: str, fleet: BeatFleet, messages: list[Message], ticks: list[datetime],
             window: tuple[float, float]) -> str:
    late = max(m.created - t.timestamp() for m, t in zip(messages, ticks_of(messages),
                                                         strict=True))
    expected = len(grid(ticks[0], ticks[-1], 1.0))
    return (f"[{label}] window {window[1] - window[0]:.1f}s: ticks sent {len(ticks)} "
            f"(expected {expected}: every second from first to last), duplicates 0, "
            f"send attempts {fleet.send_attempts()} ({fleet.send_attempts() - len(ticks)} "
            f"refused by the broker), takeovers "
            f"{', '.join(f'{t:.2f}s' for t in fleet.takeovers)}, latest send {late:.2f}s "
            f"after its tick, senders {len({m.headers['beat_by'] for m in messages})}")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "running"), [
    ("sqlite", 2), ("sqlite", 3), ("redis", 2), ("redis", 3),
    # the lease is in the side store; what differs is sending to RabbitMQ.
    ("amqp", 2),
])
def test_beat_processes_fail_over_and_each_tick_fires_exactly_once(
        kind: str, running: int, request: pytest.FixtureRequest, fleet_logs: Path) -> None:
    fleet = BeatFleet(request.getfixturevalue(URL_FIXTURES[kind]), fleet_logs)
    try:
        for _ in range(running):
            fleet.start()
        fleet.leader()
        began = time.time()
        time.sleep(3)
        # 1: SIGKILL the leader; a replacement joins as a standby.
        fleet.kill_leader()
        fleet.start()
        time.sleep(3.5)
        # 2: on Redis freeze the leader past its lease (SIGSTOP) and let it
        # wake up as a stale leader; on SQLite kill it again (a process frozen
        # inside a write transaction would hold the file's lock).
        if kind == "redis":
            stale, frozen = fleet.kill_leader(signal.SIGSTOP)
            time.sleep(max(0.0, 2.5 * LEASE - fleet.takeovers[-1]))
            frozen.send_signal(signal.SIGCONT)
            time.sleep(0.5)
            assert frozen.poll() is None and fleet.holder() != stale  # back as a standby
        else:
            fleet.kill_leader()
            fleet.start()
        time.sleep(3)
        ended = time.time()
    finally:
        fleet.stop_all()
    messages = fleet.sent()
    fleet.close()
    ticks = assert_exactly_once(ticks_of(messages), 1.0)
    assert ticks[0].timestamp() <= began + 1, "the first leader did not start on time"
    assert ticks[-1].timestamp() >= ended - 1.5, "ticks stopped before the end"
    assert len({m.headers["beat_by"] for m in messages}) == 3
    assert all(t < LEASE + LEASE / 3 + 1.5 for t in fleet.takeovers), fleet.takeovers
    print(describe(f"{kind}, {running} beats", fleet, messages, ticks, (began, ended)))


@pytest.mark.slow
def test_beat_process_restarts_continue_and_an_outage_is_not_a_burst(
        sqlite_url: str, fleet_logs: Path) -> None:
    fleet = BeatFleet(sqlite_url, fleet_logs)
    window = 2 * LEASE + LOOP
    try:
        fleet.start()
        fleet.leader()
        time.sleep(3)
        fleet.stop_all()  # SIGTERM: the lease is released on the way out
        assert fleet.holder() is None
        time.sleep(1.5)  # a quick restart: ticks in between are sent late
        fleet.start()
        fleet.leader()
        time.sleep(2.5)
        fleet.stop_all()
        stopped = time.time()
        quick = assert_exactly_once(ticks_of(fleet.sent()), 1.0)
        time.sleep(window + 2)  # an outage: longer than the failover window
        restarted = time.time()
        fleet.start()
        fleet.leader()
        time.sleep(2.5)
    finally:
        fleet.stop_all()
    after = sorted(ticks_of(fleet.sent()))
    assert not set(after) & set(quick), "a tick ran again after the restart"
    assert quick[-1].timestamp() >= stopped - 1.5
    missed = [t for t in grid(quick[-1] + timedelta(seconds=1), after[0], 1.0) if t not in after]
    assert len(missed) >= window, "the outage's ticks were sent as a burst"
    assert after[0].timestamp() >= restarted - 1, "more than one run for the missed ticks"
    assert_exactly_once(after, 1.0)


@pytest.mark.slow
def test_worker_dash_b_runs_beat_inside_the_worker(sqlite_url: str, fleet_logs: Path) -> None:
    fleet = BeatFleet(sqlite_url, fleet_logs)
    try:
        # Prefork: pool children are forked while the beat thread runs.
        worker = fleet.start("-Q", QUEUE, "-c", "2", "-B", command="worker")
        holder = fleet.leader(timeout=15)
        assert fleet.process_of(holder) is worker
        time.sleep(3)
        standby = fleet.start()  # a separate beat stands by while the worker's beat leads
        time.sleep(1.5)
        assert fleet.holder() == holder and standby.poll() is None
        stopped = time.time()
    finally:
        fleet.stop_all()
    assert worker.returncode == 0
    assert fleet.holder() is None, "the worker's beat did not release the lease on exit"
    log = (fleet_logs / "worker-0.log").read_text()
    sent = re.findall(r"beat sent tick \(beat_app.tick\) for tick (\S+)", log)
    ticks = assert_exactly_once([datetime.fromisoformat(t) for t in sent], 1.0)
    assert len(ticks) >= 4
    # The worker ran what its own beat sent.
    app = Conveyor("check", broker=sqlite_url, set_as_current=False)
    for tick in ticks:
        if tick.timestamp() < stopped - 1:
            assert app.AsyncResult(task_id_for(tick_key("tick", tick))).state == "SUCCESS"


def test_cli_registers_the_beat_command() -> None:
    from click.testing import CliRunner

    from conveyor._cli import main

    result = CliRunner().invoke(main, ["beat", "--help"])
    assert result.exit_code == 0 and "--scheduler" in result.output


def test_beat_stops_at_start_on_a_bad_entry(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), BEAT_TEST_INTERVAL="-1",
               CONVEYOR_BROKER_URL=f"sqlite:///{tmp_path / 'b.db'}")
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "-A", "tests.integration.beat_app", "beat"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "beat_schedule['tick']['schedule']: run_every must be greater than zero" in (
        done.stderr)


def test_an_entry_added_while_beat_runs_sends_no_burst() -> None:
    # A 2 s entry appears in a running beat: the 25 s failover window holds ~12 of
    # its grid ticks, none of which existed for it; at most the latest is sent.
    now = datetime(2024, 1, 1, 12, 0, 1, tzinfo=UTC)
    plan = plan_ticks(schedule(2), last=None, now=now, cutoff=now - timedelta(minutes=5),
                      window=timedelta(seconds=25))
    assert plan.send == (datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC),)
