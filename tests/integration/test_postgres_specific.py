"""What only the PostgreSQL broker has: its URL and options, its schema
versions, and connections that went stale under it."""

from __future__ import annotations

import pytest

from conveyor.brokers import Envelope, broker_from_url
from conveyor.brokers.postgres import PostgresBroker
from conveyor.exceptions import BrokerUnavailable, ConfigurationError

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(("url", "options", "expected"), [
    ("postgresql://u:s3cret@127.0.0.1/db?schema=Bad-Name", {}, "schema 'Bad-Name'"),
    ("postgresql://u:s3cret@127.0.0.1/db", {"visibility_timeout": 5},
     "visibility_timeout: not understood by the PostgreSQL broker"),
    ("postgresql://u:s3cret@127.0.0.1/db", {"poll_interval": 0}, "poll_interval=0"),
])
def test_bad_urls_and_options_are_refused_by_name(url: str, options: dict[str, object],
                                                  expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as info:
        broker_from_url(url, options)
    assert "s3cret" not in str(info.value)


def test_an_unreachable_server_is_broker_unavailable_without_the_password() -> None:
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1/db") as info:
        broker_from_url("postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout=2")
    assert "s3cret" not in str(info.value)


def test_a_schema_from_a_newer_conveyor_is_refused(pg_url: str) -> None:
    import psycopg

    broker_from_url(pg_url).close()
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".conveyor_schema SET version = 99 '
                     "WHERE component = 'broker'")
    with pytest.raises(ConfigurationError, match="broker schema version 99"):
        broker_from_url(pg_url)


def test_terminated_backends_cost_readers_nothing_and_a_producer_one_clear_error(
        pg_url: str) -> None:
    """A server restart or ``pg_terminate_backend`` leaves the pool's idle
    connections dead: reads try again on a new one; a write says it failed
    (guarantee 8: enqueues either succeed or raise), and the next one works."""
    import psycopg

    broker = broker_from_url(pg_url)
    assert isinstance(broker, PostgresBroker)
    broker.enqueue(Envelope("m1", "q", b"1"))
    pids = [c.info.backend_pid for c in broker._pool._idle]  # the pool's idle connections
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    assert broker.stats(["q"])[0].ready == 1
    pids = [c.info.backend_pid for c in broker._pool._idle]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    with pytest.raises(BrokerUnavailable, match="enqueue failed"):
        broker.enqueue(Envelope("m2", "q", b"2"))
    broker.enqueue(Envelope("m3", "q", b"3"))
    assert [d.id for d in broker.reserve(["q"], 10, lease=30, timeout=0)] == ["m1", "m3"]
    broker.close()


def test_reserve_reports_revocations_of_the_leased_tasks(pg_url: str) -> None:
    """Reserve checks revocations while leasing (the task id is the message id up
    to its first "~"), so consumers skip the extra query, as on Redis."""
    broker = broker_from_url(pg_url)
    broker.enqueue_many([Envelope(id=i, queue="q", body=b"x") for i in ("t1", "t2~1", "t3")])
    broker.revoke(["t2", "t3"], ttl=60, terminate=True)
    broker.revoke(["t1"], ttl=-1)  # expired: not revoked any more
    got = {d.id: d.revoked for d in broker.reserve(["q"], 10, lease=30, timeout=0)}
    assert got == {"t1": False, "t2~1": True, "t3": True}
    broker.close()
