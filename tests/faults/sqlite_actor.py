"""A producer or consumer process hammering one SQLite broker file (case 11).

    python -m tests.faults.sqlite_actor produce URL LEDGER NAME COUNT
    python -m tests.faults.sqlite_actor consume URL LEDGER STOPFILE LEASE

Both talk to the broker directly (no worker), so every commit is theirs.  The
producer appends ``acked <id> 0 <pid>`` lines only after ``enqueue_many``
returned; the consumer appends ``claim <id> <deliveries> <pid>`` after each
reservation, ``acking`` just before acknowledging and ``ack``/``stale`` after.  Any error is written
to ``LEDGER.errors`` with its text, and the process goes on.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from conveyor.brokers import Envelope, QueueStats, broker_from_url

BATCH = 20


def append(path: str, lines: Sequence[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(lines).encode())  # one write: lines never interleave
    finally:
        os.close(fd)


def produce(url: str, ledger: str, name: str, count: int) -> None:
    broker = broker_from_url(url)
    pid = os.getpid()
    for start in range(0, count, BATCH):
        ids = [f"{name}-{n}" for n in range(start, min(count, start + BATCH))]
        try:
            broker.enqueue_many([Envelope(id=i, queue="q", body=i.encode()) for i in ids])
        except Exception as exc:
            append(ledger + ".errors", [f"produce {name}: {exc!r}\n"])
            continue
        append(ledger, [f"acked {i} 0 {pid}\n" for i in ids])


def consume(url: str, ledger: str, stopfile: str, lease: float) -> None:
    broker = broker_from_url(url)
    pid = os.getpid()
    while True:
        try:
            got = broker.reserve(["q"], 5, lease=lease, timeout=0.2)
            if got:
                append(ledger, [f"claim {d.id} {d.deliveries} {pid}\n" for d in got])
                time.sleep(0.002)  # "work": a kill now leaves leased messages behind
                # Logged before acking: a kill between the ack's commit and the "ack"
                # line below would otherwise look like a lost message.
                append(ledger, [f"acking {d.id} {d.deliveries} {pid}\n" for d in got])
                flags = broker.ack(got)
                append(ledger, [f"{'ack' if ok else 'stale'} {d.id} {d.deliveries} {pid}\n"
                                for d, ok in zip(got, flags, strict=True)])
            elif Path(stopfile).exists() and _empty(broker.stats(["q"])[0]):
                return
        except Exception as exc:
            append(ledger + ".errors", [f"consume {pid}: {exc!r}\n"])
            time.sleep(0.05)


def _empty(stats: QueueStats) -> bool:
    """Nothing ready, delayed or leased (a killed consumer's leases must run out first)."""
    return stats.ready + stats.delayed + stats.inflight == 0


def main(argv: list[str]) -> None:
    role, url, ledger = argv[:3]
    if role == "produce":
        produce(url, ledger, argv[3], int(argv[4]))
    else:
        consume(url, ledger, argv[3], float(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
