"""``conveyor db upgrade`` / ``db status``: the tables Conveyor keeps in SQL databases.

Every store creates or upgrades its own tables the first time it is opened
(under a lock, versioned per component in ``conveyor_schema``), so nothing
has to be run by hand.  These commands are for the teams that would rather
do it on purpose: at deploy time, with a role that may create tables, before
workers that run with fewer rights start.  ``upgrade`` opens every store the
app uses that lives in SQLite or PostgreSQL (broker, results, task events,
remote control, beat's history) and then prints what each database holds;
``status`` only prints.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import click

from conveyor.exceptions import ConfigurationError
from conveyor.schemes import scheme_of

SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


@click.group("db")
def db_command() -> None:
    """Create, upgrade or show the tables Conveyor keeps in SQLite or PostgreSQL."""


@db_command.command("upgrade")
@click.pass_obj
def upgrade_command(obj: Any) -> None:
    """Create or upgrade the tables of every store the app keeps in SQL, then list them."""
    app = obj.app
    for name, opener in _openers(app):
        try:
            opener()
        except ConfigurationError as exc:
            click.echo(f"{name}: not kept in SQL here ({exc})")
    _print_versions(app)


@db_command.command("status")
@click.pass_obj
def status_command(obj: Any) -> None:
    """Print each database's Conveyor components and their schema versions."""
    _print_versions(obj.app)


def _openers(app: Any) -> list[tuple[str, Callable[[], object]]]:
    """What opening each store takes (opening is what creates its tables)."""
    from conveyor._events import store_for
    from conveyor.beat.state import open_beat_state
    from conveyor.control.base import channel_for

    control_options = dict(app.conf.broker_transport_options)
    return [
        ("broker", lambda: app.broker.stats([app.conf.task_default_queue])),
        ("results", lambda: app.backend.get("conveyor-db-upgrade")),
        ("task events", lambda: store_for(app).workers()),
        ("remote control", lambda: channel_for(app.conf.broker_url, control_options)
         .listen().close()),
        ("beat history", lambda: open_beat_state(app).note("conveyor-db-upgrade")),
    ]


def _databases(app: Any) -> list[str]:
    """The distinct SQL URLs among the app's broker, result backend and side store."""
    urls = [app.conf.broker_url, app.conf.result_url,
            str(app.conf.broker_options().get("state_url") or "")]
    seen: list[str] = []
    for url in urls:
        if url and scheme_of(url) in SQL_SCHEMES and url not in seen:
            seen.append(url)
    return seen


def _print_versions(app: Any) -> None:
    databases = _databases(app)
    if not databases:
        click.echo("no store of this app lives in SQLite or PostgreSQL")
        return
    for url in databases:
        rows = _sqlite_versions(url) if scheme_of(url) == "sqlite" else _postgres_versions(url)
        where = _describe(url)
        if not rows:
            click.echo(f"{where}: no Conveyor tables yet")
        for component, version in rows:
            click.echo(f"{where}: {component} v{version}")


def _describe(url: str) -> str:
    if scheme_of(url) == "sqlite":
        from conveyor._sqlite import parse_sqlite_url

        return f"sqlite {parse_sqlite_url(url).path}"
    from conveyor._postgres import parse_postgres_url

    parsed = parse_postgres_url(url)
    return f"postgresql {parsed.address} schema {parsed.schema}"


def _sqlite_versions(url: str) -> list[tuple[str, int]]:
    from conveyor._sqlite import parse_sqlite_url

    path = parse_sqlite_url(url).path
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return [(str(c), int(v)) for c, v in conn.execute(
                "SELECT component, version FROM conveyor_schema ORDER BY component")]
    except sqlite3.Error:
        return []


def _postgres_versions(url: str) -> list[tuple[str, int]]:
    from conveyor._postgres import Pool, parse_postgres_url, quoted

    parsed = parse_postgres_url(url)
    pool = Pool(parsed, size=1)

    def read(conn: Any) -> list[tuple[str, int]]:
        found = conn.execute("SELECT to_regclass(%s)",
                             (f"{quoted(parsed.schema)}.conveyor_schema",)).fetchone()
        if found is None or found[0] is None:
            return []
        return [(str(c), int(v)) for c, v in conn.execute(
            f"SELECT component, version FROM {quoted(parsed.schema)}.conveyor_schema "
            "ORDER BY component")]

    try:
        return pool.run("read schema versions", read)
    finally:
        pool.close()
