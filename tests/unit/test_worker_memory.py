"""What a worker process imports: every module is held by each prefork child
(docs/performance.md, "Round two, second pass: memory")."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import pytest

from conveyor._serialization import from_jsonable, to_jsonable
from conveyor.worker import main
from conveyor.worker.prefork import start_frozen
from conveyor.worker.trim import trim

#: Imported on demand only; none is on a Redis worker's path (RabbitMQ, Redis
#: Cluster and its shards, the remote-control client).
NOT_IN_A_WORKER = ("decimal", "difflib", "conveyor._amqp", "conveyor._redis_cluster",
                   "conveyor._redis_shards", "conveyor.control.api")

WORKER_IMPORTS = (
    "import json, sys\n"
    "import conveyor, conveyor._cli, conveyor.worker.main, conveyor.worker.prefork\n"
    "import conveyor.brokers.redis, conveyor.resultstores.redis, conveyor.eventstores.redis\n"
    "import conveyor.control.worker, conveyor.control.redis, conveyor.worker.ratelimit\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def test_a_worker_does_not_import_modules_it_never_uses() -> None:
    out = subprocess.run([sys.executable, "-c", WORKER_IMPORTS], capture_output=True,
                         text=True, check=True).stdout
    loaded = set(json.loads(out))
    assert "conveyor.worker.prefork" in loaded
    assert [name for name in NOT_IN_A_WORKER if name in loaded] == []


def test_decimals_still_travel_tagged() -> None:
    encoded = to_jsonable([Decimal("1.10")], "args")
    assert encoded == [{"__t": "decimal", "v": "1.10"}]
    decoded = from_jsonable(encoded)
    assert decoded == [Decimal("1.10")] and isinstance(decoded[0], Decimal)


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_gives_freed_heap_pages_back() -> None:
    blocks = [bytes(8192) for _ in range(4000)]  # 32 MiB from malloc, not CPython's arenas
    last = blocks[-1]  # keeps the heap's top in use: the rest is freed below it
    del blocks
    before = _resident()
    trim()
    assert before - _resident() > 16 * 2**20
    assert len(last) == 8192


def _report_frozen(conn: Any) -> None:
    conn.send(gc.get_freeze_count())
    conn.close()


def test_a_prefork_child_starts_with_the_supervisors_objects_frozen() -> None:
    """Its collector never walks (and so never copies) what it shares with the
    supervisor; the supervisor itself keeps collecting everything."""
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_report_frozen, args=(writer,))
    start_frozen(process)
    writer.close()
    assert reader.recv() > 1000
    process.join(5)
    assert process.exitcode == 0
    assert gc.get_freeze_count() == 0


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_the_heartbeats_memory_is_the_whole_tree_without_psutil() -> None:
    """The sum psutil gave (this process and every descendant, grandchildren
    too), read from /proc: the supervisor never imports psutil for it."""
    import psutil

    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
            "time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        me = psutil.Process()
        deadline = time.monotonic() + 10
        while len(me.children(recursive=True)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = [me, *me.children(recursive=True)]
        expected = sum(int(p.memory_info().rss) for p in tree) // 1024
        measured = main._proc_tree_kib(os.getpid())
        assert abs(measured - expected) < 2048  # this process's own allocations in between
        assert measured > _resident() // 1024 + 1024  # the grandchild is counted too
    finally:
        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        child.wait()
    out = subprocess.run([sys.executable, "-c", "import sys; from conveyor.worker import main; "
                          "assert main._memory_kib() > 0; print('psutil' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
