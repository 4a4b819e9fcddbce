"""The interface every system adapter implements.

An adapter has two halves that share one module:

* the **orchestrator side** (runs in the project's venv): which virtualenv to
  build, how to start its workers, which Redis database it owns;
* the **client side** (runs in the system's own venv, through
  ``python -m benchmarks.client``): a :class:`Client` that enqueues, waits for
  results and sends a chord with the system's public API.

Modules under ``benchmarks/systems/`` import nothing of their system at module
level, so the orchestrator can load all of them without those packages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]


# Calls per message in the chunks phase (Celery's docs use 10 and 100 in examples).
CHUNK_SIZE = 100

# A run's steps, in order (``run.py``); latency and chord use processing's warm workers.
STEPS = ("enqueue_one", "enqueue_bulk", "enqueue_group", "enqueue_chunks", "processing",
         "latency", "chord")


class NotSupported(Exception):
    """The system has no such feature (no bulk path, no chord)."""


class Client:
    """Client-side operations.  Methods may be coroutines when ``asynchronous``."""

    asynchronous: ClassVar[bool] = False

    def enqueue_one(self, n: int) -> Any:
        """Send ``n`` no-op tasks, one call each."""
        raise NotImplementedError

    def enqueue_bulk(self, n: int) -> Any:
        """Send ``n`` no-op tasks through the system's batched path."""
        raise NotSupported

    def enqueue_group(self, n: int) -> Any:
        """Send ``n`` no-op tasks as one group, the way users write it (``group(...)``)."""
        raise NotSupported

    def enqueue_chunks(self, n: int) -> Any:
        """Send ``n`` no-op calls through ``chunks`` (:data:`CHUNK_SIZE` calls per message)."""
        raise NotSupported

    def preload(self, n: int) -> Any:
        """Queue ``n`` INCR tasks (not timed); the fastest path the system has."""
        raise NotImplementedError

    def round_trip(self, value: int) -> Any:
        """Send one ``echo(value)`` task and wait for its result; return the result.

        Results-off variants send ``signal(value)`` and return the signalled value.
        """
        raise NotImplementedError

    def chord(self, n: int) -> Any:
        """Send ``n`` tasks with a callback that runs after all of them; wait for it."""
        raise NotSupported

    def close(self) -> Any:
        return None


class System:
    """Orchestrator-side description of one system under test."""

    name: ClassVar[str]             # as on the command line: "celery", "conveyor-redis"
    label: ClassVar[str]            # as in the table
    env: ClassVar[str]              # venv name under benchmarks/.envs/
    requirements: ClassVar[list[str]]
    packages: ClassVar[list[str]]   # whose versions the report lists
    db: ClassVar[int]               # the Redis database this system owns
    # Which table of the report: "redis" (against Celery) or "postgresql" (the
    # PostgreSQL section: Conveyor's PostgreSQL broker against Procrastinate
    # and PgQueuer on one server; the INCR counter stays in Redis).
    section: ClassVar[str] = "redis"
    bulk_path: ClassVar[str | None] = None   # what "bulk" means here; None: it has none
    chord_path: ClassVar[str | None] = None
    group_path: ClassVar[str | None] = None   # the user's group call; None: no group
    chunks_path: ClassVar[str | None] = None
    worker_flags: ClassVar[str] = ""         # the worker command line, for the docs
    # Tasks the processing run drains; slow systems get fewer so a full run
    # stays within its time budget (the report says so).
    processing_cap: ClassVar[int | None] = None
    # Round trips sampled, for systems whose each one takes tens of ms or more.
    samples_cap: ClassVar[int | None] = None
    # The steps this system runs (a subset of STEPS, processing always among
    # them: the later steps use its workers); the others are "n/a".
    steps: ClassVar[tuple[str, ...]] = STEPS
    # Set on a variant that stores no results: the system it is that variant
    # of.  It runs processing and round trip only (the two results change),
    # its round trip waits for a signal (``benchmarks/apps/_counter.py``), and
    # it is never "the fastest peer" of a system that stores results.
    results_off_of: ClassVar[str | None] = None
    #: The steps of a results-off variant.
    RESULTS_OFF_STEPS: ClassVar[tuple[str, ...]] = ("processing", "latency")

    def server_ports(self) -> tuple[int, ...]:
        """Loopback ports of the servers this system's tasks go through (the
        benchmark Redis always: the counter and, for most, queue and results),
        whose CPU the harness counts per task beside the worker's."""
        ports = [int(os.environ.get("BENCH_REDIS_PORT", "6379"))]
        if self.section == "postgresql":
            from benchmarks.systems import pg

            ports.append(urlsplit(pg.url()).port or 5432)
        return tuple(ports)

    @property
    def database(self) -> int:
        """The Redis database this run uses: the system's own, or ``BENCH_REDIS_DB``.

        ``BENCH_REDIS_DB`` puts every system in one database, for a shared
        server whose other databases belong to someone else; that is safe
        because systems run one at a time and each phase flushes its
        database before and after.
        """
        return int(os.environ.get("BENCH_REDIS_DB") or self.db)

    def environment(self) -> dict[str, str]:
        """Variables for the workers and the client (both read their URLs from here)."""
        from benchmarks.systems import redis_url

        env = {"BENCH_REDIS_URL": redis_url(self.database)}
        if self.results_off_of:  # the app modules read it: no task stores its result
            env["BENCH_IGNORE_RESULT"] = "1"
        return env

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every message and result (called between phases)."""

    def preloaded(self) -> None:
        """The processing run's tasks are queued; its workers start next."""


def client_env() -> dict[str, str]:
    """Read by client and app modules: where Redis is."""
    return {"BENCH_REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")}
