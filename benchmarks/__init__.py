"""Side-by-side benchmarks: Conveyor against Celery, Dramatiq, RQ, Huey, arq and taskiq.

``python -m benchmarks.run`` (or ``make bench``) builds one virtualenv per
system under ``benchmarks/.envs/``, runs the same workloads on each against
the local Redis, and writes ``benchmarks/results/latest.md`` and ``.json``.
See ``docs/performance.md`` for the method, the flags and the findings.
"""

import os

# Benchmarks flush their Redis databases between phases, so by default they
# use a Redis of their own on port 6390 (``make bench`` starts it) and never
# empty the databases that tests or applications keep on 6379.
os.environ.setdefault("BENCH_REDIS_PORT", "6390")
os.environ.setdefault("BENCH_REDIS_URL",
                      f"redis://127.0.0.1:{os.environ['BENCH_REDIS_PORT']}/0")
