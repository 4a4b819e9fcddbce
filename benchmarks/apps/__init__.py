"""The task modules each system's workers import (one per system).

Every module defines the same four tasks: ``noop()`` for enqueue runs,
``incr()`` (one Redis INCR on a connection made once per worker process),
``echo(x)`` for round trips, and ``collect(...)`` as a chord callback.
They read ``BENCH_REDIS_URL`` (set by the harness) for where Redis is.
"""
