"""Side-by-side benchmarks: Conveyor against Celery, Dramatiq, RQ, Huey, arq and taskiq.

``python -m benchmarks.run`` (or ``make bench``) builds one virtualenv per
system under ``benchmarks/.envs/``, runs the same workloads on each against
the local Redis, and writes ``benchmarks/results/latest.md`` and ``.json``.
See ``docs/performance.md`` for the method, the flags and the findings.
"""
