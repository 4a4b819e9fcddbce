"""GET /metrics: Prometheus text, built per scrape from the stores.

Nothing is counted in the monitor process: task counters and histograms are
the all-time totals workers write to the event store, so they are right
even for the hours no monitor ran, agree between two monitors, and survive
a monitor restart.  Queue depths come live from the broker; worker gauges
from the last heartbeats.

Metrics::

    conveyor_tasks_total{task, state}                    counter
    conveyor_task_runtime_seconds{task}                  histogram (BUCKETS)
    conveyor_task_queue_wait_seconds{task}               histogram (BUCKETS)
    conveyor_queue_messages{queue, state}                gauge: ready|delayed|inflight|dead
    conveyor_queue_oldest_message_age_seconds{queue}     gauge: how long the oldest ready
                                                         message has waited (absent when the
                                                         broker cannot tell: RabbitMQ)
    conveyor_worker_up{worker, hostname}                 gauge: 1 online, 0 offline
    conveyor_worker_active_tasks{worker}                 gauge
    conveyor_worker_concurrency{worker}                  gauge
    conveyor_worker_memory_bytes{worker}                 gauge
    conveyor_worker_processed_tasks{worker}              gauge (since the worker started)
    conveyor_worker_last_heartbeat_timestamp_seconds{worker}  gauge
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from conveyor._events import BUCKETS, OUTCOMES, RUNTIME, WAIT, EventStore

if TYPE_CHECKING:
    from conveyor.app import Conveyor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Histograms:
    """All-time totals regrouped per task."""

    def __init__(self, totals: list[tuple[str, str, float]]) -> None:
        self.counts: dict[tuple[str, str], float] = {}
        self.buckets: dict[tuple[str, str], list[float]] = {}
        self.sums: dict[tuple[str, str], float] = {}
        for task, metric, value in totals:
            kind, _, rest = metric.partition(":")
            if kind == "n":
                self.counts[(task, rest)] = value
            elif rest == "sum":
                self.sums[(task, kind)] = value
            elif rest.isdigit() and int(rest) <= len(BUCKETS):
                row = self.buckets.setdefault((task, kind), [0.0] * (len(BUCKETS) + 1))
                row[int(rest)] += value

    def family(self, kind: str, name: str, doc: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=["task"])
        for (task, k), row in sorted(self.buckets.items()):
            if k != kind:
                continue
            cumulative, running = [], 0.0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], row, strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric([task], cumulative, self.sums.get((task, kind), 0.0))
        return family


class StoreCollector(Collector):
    """Reads the stores at scrape time."""

    def __init__(self, app: Conveyor, store: EventStore) -> None:
        self.app, self.store = app, store

    def collect(self) -> Iterator[Metric]:
        hist = _Histograms(self.store.totals())
        tasks = CounterMetricFamily("conveyor_tasks", "Task executions by outcome "
                                    "(DEAD = dead-lettered)", labels=["task", "state"])
        for (task, state), value in sorted(hist.counts.items()):
            if state in OUTCOMES:
                tasks.add_metric([task, state], value)
        yield tasks
        yield hist.family(RUNTIME, "conveyor_task_runtime_seconds", "Task run time")
        yield hist.family(WAIT, "conveyor_task_queue_wait_seconds",
                          "Time from sent (or ETA) to start")
        yield from self._queues()
        yield from self._workers()

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("conveyor_queue_messages", "Messages per queue and state",
                                   labels=["queue", "state"])
        age = GaugeMetricFamily("conveyor_queue_oldest_message_age_seconds",
                                "How long the oldest ready message has waited (0: none ready)",
                                labels=["queue"])
        for s in self.app.broker.stats():
            for state in ("ready", "delayed", "inflight", "dead"):
                family.add_metric([s.queue, state], getattr(s, state))
            if s.oldest_age is not None:
                age.add_metric([s.queue], s.oldest_age)
        yield family
        yield age

    def _workers(self) -> Iterator[GaugeMetricFamily]:
        workers = self.store.workers()
        up = GaugeMetricFamily("conveyor_worker_up", "1 when the worker's heartbeat is fresh",
                               labels=["worker", "hostname"])
        gauges: dict[str, tuple[GaugeMetricFamily, Any]] = {
            "active": (GaugeMetricFamily("conveyor_worker_active_tasks", "Tasks running now",
                                         labels=["worker"]),
                       lambda w: len(w.get("active") or [])),
            "concurrency": (GaugeMetricFamily("conveyor_worker_concurrency", "Pool slots",
                                              labels=["worker"]),
                            lambda w: w.get("concurrency") or 0),
            "memory": (GaugeMetricFamily("conveyor_worker_memory_bytes",
                                         "Resident memory of the worker and its children",
                                         labels=["worker"]),
                       lambda w: (w.get("memory_kib") or 0) * 1024),
            "processed": (GaugeMetricFamily("conveyor_worker_processed_tasks",
                                            "Tasks finished since the worker started",
                                            labels=["worker"]),
                          lambda w: w.get("processed") or 0),
            "beat": (GaugeMetricFamily("conveyor_worker_last_heartbeat_timestamp_seconds",
                                       "Unix time of the last heartbeat", labels=["worker"]),
                     lambda w: w.get("heartbeat_at") or 0),
        }
        for w in workers:
            worker = str(w.get("id"))
            up.add_metric([worker, str(w.get("hostname") or "")], 1 if w["online"] else 0)
            for family, read in gauges.values():
                family.add_metric([worker], float(read(w)))
        yield up
        for family, _ in gauges.values():
            yield family


def render(app: Conveyor, store: EventStore) -> bytes:
    """One scrape: a fresh registry, so nothing lingers between scrapes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(app, store))
    return generate_latest(registry)
