"""Result stores, chosen by URL scheme (or ``django-db``) through :data:`RESULT_STORES`."""

from __future__ import annotations

from typing import Any

from conveyor.exceptions import ConfigurationError
from conveyor.resultstores.base import ResultStore, Stored
from conveyor.resultstores.record import ResultRecord
from conveyor.schemes import Family, is_amqp, scheme_of

__all__ = ["RESULT_STORES", "ResultRecord", "ResultStore", "Stored", "result_store_from_url"]

_ALTERNATIVES = ("use sqlite:///path.db, redis://host:port/db, postgresql://user@host/db, "
                 "memory:// or django-db")
_REDIS = "conveyor.resultstores.redis:RedisResultStore"
_POSTGRES = "conveyor.resultstores.postgres:PostgresResultStore"

#: Scheme → result store class, called as ``cls(url)``, or ``cls(url, **options)``
#: when it :attr:`~ResultStore.takes_transport_options`.  ``django-db`` is not
#: here: ``conveyor.contrib.django`` registers it through the
#: ``conveyor.result_stores`` entry-point group, as any third-party store does.
RESULT_STORES = Family("result store", "conveyor.result_stores", {
    "memory": "conveyor.resultstores.memory:MemoryResultStore",
    "sqlite": "conveyor.resultstores.sqlite:SQLiteResultStore",
    "redis": _REDIS, "rediss": _REDIS, "unix": _REDIS, "sentinel": _REDIS,
    "redis+cluster": _REDIS,
    "postgresql": _POSTGRES, "postgres": _POSTGRES,
}, hint=_ALTERNATIVES)


def result_store_from_url(url: str, options: dict[str, Any] | None = None,
                          retry: tuple[float, float, float] | None = None) -> ResultStore:
    """Open the store a URL names: ``sqlite://``, ``redis://``, ``postgresql://``,
    ``memory://``, ``django-db``, Celery's ``db+sqlite:///path`` and ``db+postgresql://``,
    or a scheme a plug-in registered.

    ``options`` configure a Redis store's client; ``retry`` (max retries,
    first sleep, max sleep) wraps the store so that calls which could not
    reach it are retried (Celery's ``result_backend_always_retry``).
    """
    store = _open(_from_sqlalchemy_form(url), dict(options or {}))
    if retry is not None:
        from conveyor.resultstores.retrying import RetryingResultStore

        store = RetryingResultStore(store, *retry)
    return store


def _open(url: str, options: dict[str, Any]) -> ResultStore:
    scheme = scheme_of(url)
    if is_amqp(url) and not RESULT_STORES.knows(scheme):
        from conveyor._amqp import not_in_rabbitmq

        raise not_in_rabbitmq("results (result_backend is unset, so they would go beside the "
                              "broker)")
    cls = RESULT_STORES.load(scheme, setting="result_backend", url_for_error=_safe(url))
    if not getattr(cls, "takes_transport_options", False):
        if options:
            raise ConfigurationError(
                f"result_backend_transport_options ({', '.join(sorted(options))}) apply to "
                f"Redis result stores, not {scheme}")
        store: ResultStore = cls(url)
    else:
        store = cls(url, **options)
    return store


def _from_sqlalchemy_form(url: str) -> str:
    """Celery's SQLAlchemy backend URLs: ``db+sqlite:///path`` is Conveyor's SQLite store.

    ``db+postgresql[+driver]://`` is Conveyor's PostgreSQL store (psycopg 3
    whatever the driver named).  Other ``db+`` databases are refused by name:
    MySQL and the rest are not planned.
    """
    if not url.lower().startswith("db+"):
        return url
    inner = url[3:]
    dialect = inner.split("://", 1)[0].split("+", 1)[0].lower()
    if dialect == "sqlite":
        return "sqlite://" + inner.split("://", 1)[1] if "://" in inner else inner
    if dialect in ("postgresql", "postgres"):
        return "postgresql://" + inner.split("://", 1)[1]  # any +driver: psycopg 3 here
    raise ConfigurationError(
        f"result_backend {_safe(url)!r}: Celery's SQLAlchemy backend for {dialect} has no "
        f"counterpart here; {_ALTERNATIVES}, or db+sqlite:///path.db")


def _safe(url: str) -> str:
    """The URL without its password, for errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
