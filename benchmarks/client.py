"""The client half of a benchmark step, run inside the system's own venv.

``python -m benchmarks.client SYSTEM OP [--n N] [--samples S] [--warmup W]``
prints one JSON object on its last line of output: ``{"seconds": ...}`` for
timed operations, ``{"samples": [...]}`` for latency.  Only the operation is
timed, not the interpreter start or the imports.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import sys
import time
from typing import Any

from benchmarks import systems
from benchmarks.systems.base import Client, NotSupported


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _timed(call: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await _maybe(call(*args))
    return time.perf_counter() - start, result


async def _timed_cpu(call: Any, *args: Any) -> tuple[float, float, Any]:
    """Wall and CPU seconds of this process (CPU moves less on a shared machine)."""
    cpu = time.process_time()
    seconds, result = await _timed(call, *args)
    return seconds, time.process_time() - cpu, result


async def _latency(client: Client, samples: int, warmup: int) -> dict[str, Any]:
    for i in range(warmup):
        got = await _maybe(client.round_trip(i))
        if got != i:
            raise AssertionError(f"round trip returned {got!r}, expected {i!r}")
    out: list[float] = []
    for i in range(samples):
        seconds, got = await _timed(client.round_trip, i)
        if got != i:
            raise AssertionError(f"round trip returned {got!r}, expected {i!r}")
        out.append(seconds)
    return {"samples": out}


async def run(system: str, op: str, n: int, samples: int, warmup: int) -> dict[str, Any]:
    client: Client = systems.get(system).client()  # type: ignore[attr-defined]
    opener = getattr(client, "open", None)
    if opener is not None:
        await _maybe(opener())
    try:
        if op == "latency":
            return await _latency(client, samples, warmup)
        if op == "ping":
            return {"ok": True}
        call = {"enqueue_one": client.enqueue_one, "enqueue_bulk": client.enqueue_bulk,
                "enqueue_group": client.enqueue_group, "enqueue_chunks": client.enqueue_chunks,
                "preload": client.preload, "chord": client.chord}[op]
        try:
            seconds, cpu, result = await _timed_cpu(call, n)
        except NotSupported:
            return {"unsupported": True}
        return {"seconds": seconds, "cpu_seconds": cpu,
                "result": result if isinstance(result, (int, str)) else None}
    finally:
        await _maybe(client.close())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client")
    parser.add_argument("system")
    parser.add_argument("op", choices=["enqueue_one", "enqueue_bulk", "enqueue_group",
                                       "enqueue_chunks", "preload", "latency", "chord",
                                       "ping"])
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--samples", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    out = asyncio.run(run(args.system, args.op, args.n, args.samples, args.warmup))
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
