"""What a worker process imports: every module is held by each prefork child
(docs/performance.md, "Round two, second pass: memory")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest

from conveyor._serialization import from_jsonable, to_jsonable
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
