"""RabbitMQ faults mid-run (guarantee 8 on amqp://, with 1 and 2 across them).

Every case runs on a RabbitMQ node of the suite's own (:mod:`.rabbit_node`;
the shared one on 5672 is never restarted or alarmed), with a real prefork
worker (2 children), a producer thread sending a task every 20 ms, and the
fault suite's ledger.  A *watch* connection of the test's own tells when the
fault struck: RabbitMQ closes it with the rest.  Then:

* every enqueue that returned an id ran (lost = 0) and nothing is left in
  the queue, its delay ladder or in flight;
* a task ran twice only if it had started before the fault struck (or within
  ``SEEN`` after it) and not finished before the fault was set off: its
  acknowledgement went down with the connection (RabbitMQ closes connections
  one by one, so a worker's may go before the watch's).  Tasks waiting in a
  child's prefetch when the connection dropped are not started there
  (RabbitMQ hands them out again);
* enqueues while RabbitMQ is away raise :class:`BrokerUnavailable` quickly,
  naming the server without the password; none hangs;
* the worker and its children live through it (no child died, so nothing
  crash-looped) and reconnect by themselves.

The memory-alarm case blocks publishers: an enqueue waits
``blocked_connection_timeout`` and then raises, while workers go on
acknowledging (their consuming connection never publishes, so RabbitMQ
never blocks it).  The consumer-timeout case runs a task past the node's
``consumer_timeout``: RabbitMQ closes the channel and hands the message out
again, and the side-store lease the task took when it outlived its lease
keeps the second copy from running while the first still does.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pytest

from conveyor import Conveyor
from conveyor.exceptions import BrokerUnavailable

from ..conftest import require_tool, wipe_amqp_queues
from ..integration.processes import Ledger, wait_for
from .harness import (
    LEASE,
    Figures,
    Producer,
    Workers,
    assert_nothing_lost,
    report,
    settled,
    task,
    total_queue,
    wait_ready,
)
from .rabbit_node import Cue, RabbitNode

BLOCKED = 2.0  # blocked_connection_timeout (s) of producers and workers
CONSUMER_TIMEOUT_MS = 5000  # the node's consumer_timeout; checked every 0.5 s
SEEN = 0.1  # seconds a worker may take to see a dropped connection the watch saw


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """One node for the module's cases: starting one takes 5-25 s here."""
    require_tool("rabbitmq-server", RabbitNode.available())
    node = RabbitNode(tmp_path_factory.mktemp("rabbit"), f"conveyor-fault-{os.getpid()}",
                      consumer_timeout_ms=CONSUMER_TIMEOUT_MS)
    node.start()
    yield node
    node.stop()


@pytest.fixture
def node_url(rabbit_node: RabbitNode, tmp_path: Path) -> str:
    if not rabbit_node.answers():  # an earlier case failed while the node was down
        rabbit_node.start()
    url = (f"{rabbit_node.url}?state_url=sqlite:///{tmp_path / 'state.db'}"
           f"&blocked_connection_timeout={BLOCKED:g}")
    wipe_amqp_queues(url, ("default",))
    return url


class Watch:
    """A connection of the test's own: when RabbitMQ drops it, the fault has struck."""

    def __init__(self, node: RabbitNode) -> None:
        self.conn = node.connect()
        self.dropped_at: float | None = None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        try:
            while self.conn.is_open:
                self.conn.process_data_events(0.02)
        except pika.exceptions.AMQPError:
            pass
        self.dropped_at = time.monotonic()

    def wait(self, cue: Cue | None = None, timeout: float = 180) -> float:
        """When RabbitMQ dropped the watch connection.

        The long bound is for a cue's CLI slow to run (rabbit_node.Cue): under
        a full suite's load, stopping the app once took over 60 s to drop this
        connection (one rerun in a CI run of 2026-12-05).  A fault struck by
        ``cue`` fails soon after the cue has ended without a drop (the drop
        may still be on its way), naming how it ended, as ``AlarmWatch.wait``."""
        what = "the fault to reach the watch connection"
        wait_for(lambda: self.dropped_at is not None or (cue is not None and cue.ended),
                 timeout, what)
        if cue is not None:
            wait_for(lambda: self.dropped_at is not None, 10, f"{what} ({cue.outcome()})")
        assert self.dropped_at is not None
        return self.dropped_at


@dataclass
class Rig:
    """A worker, a producer and the ledger of one case."""

    node: RabbitNode
    ledger: Ledger
    workers: Workers
    client: Conveyor
    producer: Producer
    worker: subprocess.Popen[bytes] | None = None
    sent: list[str] = field(default_factory=list)  # ids the test itself sent

    def backlog(self, count: int, seconds: float = 0.05) -> None:
        """Queue ``count`` tasks at once, so that each child holds a full prefetch
        (tasks waiting to start) when the fault strikes: one batch, not a confirm
        round trip each (60 of those took 3 s with the test process's GIL busy)."""
        self.sent += [r.id for r in self.client.send_many(task("sleep"), [(seconds,)] * count)]

    def in_flight(self, ends_before: int, starts: set[str]) -> set[str]:
        """Tasks started (``starts``) and not among the first ``ends_before`` ends."""
        done = {e[1] for e in self.ledger.events("end")[:max(0, ends_before)]}
        return starts - done

    def started_by(self, moment: float) -> set[str]:
        """Tasks started by ``moment`` (read then: call it right after)."""
        time.sleep(max(0.0, moment - time.monotonic()))
        return {e[1] for e in self.ledger.events("start")}

    def ends(self) -> int:
        """Tasks ended so far: call it just before setting a fault off."""
        return len(self.ledger.events("end"))

    def may_repeat(self, struck_at: float, ends_before: int) -> set[str]:
        """Tasks that may run twice: started by the time the workers saw the fault
        and not ended before it was set off (``ends_before``, from :meth:`ends`;
        the last few ends before it may not have been acknowledged yet).

        The watch's connection is not necessarily the first RabbitMQ closes: a
        worker's may go some milliseconds earlier, and the tasks its children
        finish meanwhile lose their acks.  So the allowance counts from the
        moment the fault was set off, not from when the watch saw it.  The last
        8 ends before it count as unacknowledged: a child holds its acks back
        up to 5 ms (ADR 0035), longer when a loaded machine delays the thread
        that sends them (with a margin of 4, a full run saw one task that ended
        before the fault was set off run again).
        """
        return self.in_flight(ends_before - 8, self.started_by(struck_at + SEEN))

    def recovery_after(self, moment: float, starts: int | None = None,
                       timeout: float = 60) -> tuple[float, float]:
        """Seconds from ``moment`` until the workers start tasks again (more than
        ``starts``, by default those so far), and until the producer's sends are
        accepted again."""
        starts = len(self.ledger.events("start")) if starts is None else starts
        worked = sent = None
        deadline = time.monotonic() + timeout
        while worked is None or sent is None:
            assert time.monotonic() < deadline, f"no recovery within {timeout}s"
            if worked is None and len(self.ledger.events("start")) > starts:
                worked = time.monotonic() - moment
            if sent is None and self.producer.accepted_at and \
                    self.producer.accepted_at[-1] > moment:
                sent = self.producer.accepted_at[-1] - moment
            time.sleep(0.02)
        return worked, sent

    def refused_between(self, began: float, ended: float) -> list[tuple[float, BaseException]]:
        """(seconds taken, error) of the sends that failed between two moments."""
        return [(failed - start, error) for (start, failed), error
                in zip(self.producer.errors_at, self.producer.errors, strict=False)
                if began <= failed <= ended]

    def drain(self, may_repeat: set[str]) -> tuple[list[str], int, set[str]]:
        """Stop producing, wait until everything accepted ran; (ids, lost, the ids that
        ran twice)."""
        self.producer.stop.set()
        ids = self.sent + list(self.producer.accepted)
        wait_for(lambda: settled(self.client.broker, self.ledger, ids), 60,
                 "every accepted task to run")
        total = total_queue(self.client.broker, self.ledger, ids)
        assert_nothing_lost(total, may_repeat=may_repeat)
        assert not total.dead, f"dead-lettered: {total.dead}"
        return ids, len(total.lost), set(total.duplicates)

    def assert_survived(self) -> None:
        assert self.worker is not None and self.worker.poll() is None, "the worker exited"
        logs = self.workers.logs()
        assert logs.count("exited with") == 0, "a worker child died"
        assert self.node.password not in logs, "the password reached a log line"


@contextmanager
def running(node: RabbitNode, url: str, tmp_path: Path, flowing: int = 20) -> Iterator[Rig]:
    """A prefork worker (2 children) and a producer, work flowing."""
    ledger = Ledger(tmp_path / "ledger.txt")
    results = f"sqlite:///{tmp_path / 'results.db'}"
    workers = Workers(url, ledger, tmp_path, results=results)
    client = Conveyor("producer", broker=url, backend=results, set_as_current=False)
    producer = Producer(client)
    thread = threading.Thread(target=producer.run, daemon=True)
    rig = Rig(node, ledger, workers, client, producer)
    try:
        rig.worker = workers.start("-c", "2")
        wait_ready(workers, rig.worker)
        thread.start()
        wait_for(lambda: len(ledger.count("end")) >= flowing, 30, "work to flow")
        yield rig
    finally:
        producer.stop.set()
        thread.join(15)
        workers.stop_all()
        client.close()


def assert_clear_refusals(rig: Rig, refused: list[tuple[float, BaseException]],
                          wording: str, slowest: float) -> None:
    assert refused, "enqueues while RabbitMQ was away must fail"
    for took, error in refused:
        assert isinstance(error, BrokerUnavailable), repr(error)
        assert wording in str(error), str(error)
        assert f"127.0.0.1:{rig.node.port}" in str(error), str(error)
        assert rig.node.password not in str(error)
        assert took < slowest, f"an enqueue took {took:.1f}s to fail"


def _outage(rig: Rig, name: str, strike: Callable[[], None],
            back: Callable[[], object], cue: Cue | None = None) -> None:
    """``strike`` takes the node away (through ``cue``, when one strikes it);
    ``back`` returns once it is back.  Check, report."""
    node = rig.node
    watch = Watch(node)
    rig.backlog(40)
    ends_before = rig.ends()
    strike()
    down_at = watch.wait(cue)
    may_repeat = rig.may_repeat(down_at, ends_before)
    returning = threading.Thread(target=back, daemon=True)
    returning.start()
    wait_for(node.answers, 120, "the node to listen again", interval=0.02)
    up_at = time.monotonic()
    returning.join(60)
    worked, sent = rig.recovery_after(up_at)
    ids, lost, duplicates = rig.drain(may_repeat)
    refused = rig.refused_between(down_at, up_at + 0.5)
    accepted_while_down = sum(1 for at in rig.producer.accepted_at if down_at + 2 < at < up_at)
    assert accepted_while_down == 0, "an enqueue succeeded while the node was down"
    assert_clear_refusals(rig, refused, "RabbitMQ at amqp://conveyor@127.0.0.1", slowest=10.0)
    rig.assert_survived()
    report(Figures(name, "amqp", len(ids), 1, lost, len(duplicates), max(worked, sent),
                   f"down {up_at - down_at:.1f}s; after it, tasks started in {worked:.2f}s "
                   f"and sends were accepted in {sent:.2f}s; {len(refused)} sends refused "
                   f"(each after {min(t for t, _ in refused):.1f}-"
                   f"{max(t for t, _ in refused):.1f}s); "
                   f"{len(duplicates)}/{len(may_repeat)} in flight ran again"))


@pytest.mark.slow
def test_stop_app_and_start_app_mid_run(rabbit_node: RabbitNode, node_url: str,
                                        tmp_path: Path) -> None:
    with rabbit_node.cue("rabbit:stop(), timer:sleep(3000), rabbit:start().") as cue, \
            running(rabbit_node, node_url, tmp_path) as rig:
        _outage(rig, "RabbitMQ stop_app, 3 s, start_app", cue.go, cue.done, cue)


@pytest.mark.slow
def test_node_killed_and_restarted_mid_run(rabbit_node: RabbitNode, node_url: str,
                                           tmp_path: Path) -> None:
    with running(rabbit_node, node_url, tmp_path) as rig:
        _outage(rig, "RabbitMQ node SIGKILL + restart", rabbit_node.kill,
                lambda: rabbit_node.start())


@pytest.mark.slow
def test_close_all_connections_mid_run(rabbit_node: RabbitNode, node_url: str,
                                       tmp_path: Path) -> None:
    with rabbit_node.cue('rabbit_networking:close_all_connections("fault test").') as cue, \
            running(rabbit_node, node_url, tmp_path) as rig:
        watch = Watch(rabbit_node)
        rig.backlog(40)
        began, ends_before = time.monotonic(), rig.ends()
        cue.go()
        dropped_at = watch.wait(cue)
        starts = len(rig.ledger.events("start"))  # none start until the reconnection
        cue.done()
        # RabbitMQ closes the connections one by one, the watch's not necessarily
        # first, and under load a third of a second apart (runs of 2026-12-06 saw
        # a child's two links closed 0.33 s apart, and tasks started after the
        # watch's drop lose their acks with their own connection): the fault lasts
        # until close_all_connections has returned.
        struck_until = max(dropped_at, time.monotonic())
        may_repeat = rig.may_repeat(struck_until, ends_before)
        # A send whose confirm was on its way when its connection closed is sent
        # again on a new one: it may be queued twice (at least once).
        resent = {i for i, at in zip(rig.producer.accepted, rig.producer.accepted_at,
                                     strict=False) if began < at < struck_until + 2}
        worked, sent = rig.recovery_after(dropped_at, starts)
        ids, lost, duplicates = rig.drain(may_repeat | resent)
        refused = rig.refused_between(began, time.monotonic())
        assert not refused, f"a send failed although RabbitMQ stayed up: {refused[:3]}"
        rig.assert_survived()
        report(Figures("RabbitMQ close_all_connections", "amqp", len(ids), 1, lost,
                       len(duplicates), max(worked, sent),
                       f"tasks started {worked:.2f}s after the drop, sends accepted "
                       f"{sent:.2f}s after it; {len(duplicates & may_repeat)}/"
                       f"{len(may_repeat)} in flight ran again, "
                       f"{len(duplicates - may_repeat)} sends queued twice"))


class AlarmWatch:
    """Publishes to a queue of its own until RabbitMQ blocks it, then waits for the
    unblock: the alarm's start and end as a publisher sees them."""

    def __init__(self, node: RabbitNode) -> None:
        self.conn = node.connect()
        self.blocked_at: float | None = None
        self.unblocked_at: float | None = None
        self.error: BaseException | None = None
        self.conn.add_on_connection_blocked_callback(lambda *_: self._mark("blocked_at"))
        self.conn.add_on_connection_unblocked_callback(lambda *_: self._mark("unblocked_at"))
        self.channel = self.conn.channel()
        self.channel.queue_declare("alarm-watch", auto_delete=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _mark(self, attribute: str) -> None:
        setattr(self, attribute, time.monotonic())

    def _run(self) -> None:
        transient = pika.BasicProperties(delivery_mode=1)
        try:
            while self.unblocked_at is None:
                if self.blocked_at is None:
                    self.channel.basic_publish("", "alarm-watch", b".", transient)
                self.conn.process_data_events(0.05)
            self.conn.close()
        except BaseException as exc:  # whatever ends the watch, wait() reports it
            self.error = exc

    def _settled(self, attribute: str) -> bool:
        return (getattr(self, attribute) is not None or self.error is not None
                or not self.thread.is_alive())

    def wait(self, attribute: str, cue: Cue, timeout: float = 180) -> float:
        """When the watch was blocked (``blocked_at``) or unblocked (``unblocked_at``).

        Fails as soon as the watch has stopped, and soon after ``cue`` has
        ended (the notice may still be on its way), naming what ended it: the
        long bound is only for a cue's CLI slow to run (as Watch.wait)."""
        what = f"the watch connection to be {attribute.removesuffix('_at')}"
        wait_for(lambda: self._settled(attribute) or cue.ended, timeout, what)
        wait_for(lambda: self._settled(attribute), 10, f"{what} ({cue.outcome()})")
        assert self.error is None, f"the alarm watch failed: {self.error!r}"
        assert getattr(self, attribute) is not None, f"the alarm watch ended before {what}"
        return float(getattr(self, attribute))


@pytest.mark.slow
def test_memory_alarm_blocks_publishers_and_workers_keep_acking(
        rabbit_node: RabbitNode, node_url: str, tmp_path: Path) -> None:
    """RabbitMQ blocks a connection only when it publishes while the alarm is on
    (rabbit_reader's ``publish_received``): the alarm stays on until the watch has
    been blocked (``Await``), so the watch's publishes need not win a race with a
    fixed window, and then 5 s more.  If the watch is not blocked within 60 s,
    the cue clears the alarm 5 s later and ends, and the wait fails with its
    outcome."""
    alarm = ("vm_memory_monitor:set_vm_memory_high_watermark(0.0), "
             'Seen = Await("blocked", 60000), timer:sleep(5000), '
             "vm_memory_monitor:set_vm_memory_high_watermark(0.4), Seen.")
    with rabbit_node.cue(alarm) as cue, running(rabbit_node, node_url, tmp_path) as rig:
        watch = AlarmWatch(rabbit_node)
        # A task that sends a task once the alarm is on (a worker's own publish must
        # not stall its acknowledgements), and a backlog for both children.  The
        # relay and the tasks its child prefetched wait until its send is refused,
        # BLOCKED after the block: queued only once the cue waits on the node
        # (its CLI takes seconds to start), so that they do not outlive the
        # node's consumer_timeout, whose channel close would hand finished tasks
        # out again (seen under load: the relay ran 5.3 s, 3.1 s of it before
        # the alarm, and two tasks ran twice).
        cue.wait_ready()
        marker = tmp_path / "alarm-on"
        relay = rig.client.send_task(task("relay"), [str(marker)])
        rig.sent.append(relay.id)
        rig.backlog(60, seconds=0.1)
        cue.go()
        blocked_at = watch.wait("blocked_at", cue)
        cue.signal("blocked")
        marker.touch()
        ends_at_alarm = len(rig.ledger.events("end"))
        unblocked_at = watch.wait("unblocked_at", cue)
        ran_during = len(rig.ledger.events("end")) - ends_at_alarm
        _, sent = rig.recovery_after(unblocked_at)
        assert cue.done() == "go", "the alarm did not wait for the watch's block"
        ids, lost, duplicates = rig.drain(set())
        refused = rig.refused_between(blocked_at, unblocked_at)
        assert_clear_refusals(rig, refused, "memory or disk alarm", slowest=BLOCKED + 3)
        assert all(took >= BLOCKED - 0.1 for took, _ in refused), "refused before the timeout"
        assert ran_during >= 10, f"only {ran_during} tasks finished during the alarm"
        assert relay.get(timeout=30) is False, "the worker's own send was not refused"
        queued_anyway = set(rig.producer.refused_ids) & set(rig.ledger.count("end"))
        rig.assert_survived()
        report(Figures("RabbitMQ memory alarm (publishers blocked)", "amqp", len(ids), 1,
                       lost, len(duplicates), sent,
                       f"alarm {unblocked_at - blocked_at:.1f}s, {len(refused)} sends "
                       f"refused after {BLOCKED:g}s ({len(queued_anyway)} queued anyway), "
                       f"{ran_during} tasks finished during it"))


@pytest.mark.slow
def test_a_task_longer_than_consumer_timeout_runs_once(
        rabbit_node: RabbitNode, node_url: str, tmp_path: Path) -> None:
    """RabbitMQ closes the channel of a delivery held past ``consumer_timeout`` and
    hands the message out again; the other child receives it while the task still
    runs, and must not start it."""
    with running(rabbit_node, node_url, tmp_path, flowing=0) as rig:
        long = rig.client.send_task(task("sleep"), [CONSUMER_TIMEOUT_MS / 1000 + 2]).id
        rig.sent.append(long)
        wait_for(lambda: rig.ledger.count("start")[long], 30, "the long task to start")
        started_at = time.monotonic()
        wait_for(lambda: rig.ledger.count("end")[long], 60, "the long task to end")
        ran_for = time.monotonic() - started_at
        ids, lost, duplicates = rig.drain(set())
        assert rig.ledger.count("start")[long] == 1, "the long task started twice"
        assert "consumer_timeout" in rig.workers.logs(), "the closed channel was not explained"
        rig.assert_survived()
        report(Figures("RabbitMQ consumer_timeout < task", "amqp", len(ids), 1, lost,
                       len(duplicates), None,
                       f"task {ran_for:.1f}s, consumer_timeout "
                       f"{CONSUMER_TIMEOUT_MS / 1000:g}s, lease {LEASE:g}s"))
