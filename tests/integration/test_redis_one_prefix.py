"""One key prefix for everything an app keeps in Redis (issue 17).

The result store used to read only ``result_backend_transport_options``, so
with ``broker_transport_options={"prefix": ...}`` the messages went under
the prefix while results, group records and chord counters went under the
default ``conveyor:``: two apps sharing a database by prefix kept their
results in one namespace.  (Celery keeps the two apart: its Redis result backend reads
``global_keyprefix`` from ``result_backend_transport_options`` only.  Here
the result store's own prefix still wins, and without one the app's single
prefix applies: ADR 0020.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from conveyor import Conveyor, chord
from conveyor._events import store_for
from conveyor.testing import run_worker

pytestmark = pytest.mark.redis

T = 15.0


def _keys(url: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return sorted(k.decode() for k in client.keys("*"))
    finally:
        client.close()


@pytest.fixture
def app(redis_url: str, redis_prefix: str) -> Iterator[Conveyor]:
    application = Conveyor("one-prefix", broker=redis_url, set_as_current=False)
    application.conf.broker_transport_options = {"prefix": redis_prefix}
    yield application
    application.close()


def test_results_chords_events_and_control_use_the_broker_prefix(
        app: Conveyor, redis_url: str, redis_prefix: str) -> None:
    @app.task(name="op.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="op.total")
    def total(values: list[int]) -> int:
        return sum(values)

    with run_worker(app):
        assert add.delay(1, 2).get(timeout=T) == 3
        joined = chord([add.s(i, i) for i in range(3)])(total.s())
        assert joined.get(timeout=T) == 6
    assert store_for(app).workers(), "the worker's heartbeat was stored"
    app.control.broadcast("ping", reply=False)  # the control channel is opened
    keys = _keys(redis_url)
    stray = [k for k in keys if not k.startswith(f"{redis_prefix}:")]
    assert keys and stray == []
    # What the fix moved: results and the chord join, under the prefix.
    assert any(k.startswith(f"{redis_prefix}:result:") for k in keys)
    assert any(k.startswith(f"{redis_prefix}:ev") for k in keys)


def test_a_result_backend_of_its_own_keeps_the_app_prefix(
        app: Conveyor, redis_url: str, redis_prefix: str) -> None:
    """Another result URL is another server (here: the same one), not another app:
    the key prefix still names the app's keys there."""
    app.conf.result_backend = redis_url
    app.backend.set("t1", "SUCCESS", b"{}", 60)
    keys = _keys(redis_url)
    assert f"{redis_prefix}:result:t1" in keys
    assert all(k.startswith(f"{redis_prefix}:") for k in keys)
    assert store_for(app).p == f"{redis_prefix}:ev"  # type: ignore[attr-defined]


def test_the_result_stores_own_prefix_wins(app: Conveyor, redis_url: str,
                                           redis_prefix: str) -> None:
    app.conf.result_backend_transport_options = {"prefix": f"{redis_prefix}-r"}
    app.backend.set("t1", "SUCCESS", b"{}", 60)
    keys = _keys(redis_url)
    assert f"{redis_prefix}-r:result:t1" in keys
    assert all(k.startswith(f"{redis_prefix}-r:") for k in keys)
    # The event store sits at the result URL and reads the same options.
    assert store_for(app).p == f"{redis_prefix}-r:ev"  # type: ignore[attr-defined]
    app.conf.result_backend_transport_options = {}
    app.conf.result_backend = f"{redis_url}?prefix={redis_prefix}-u"
    app.backend.set("t2", "SUCCESS", b"{}", 60)
    assert f"{redis_prefix}-u:result:t2" in _keys(redis_url)
