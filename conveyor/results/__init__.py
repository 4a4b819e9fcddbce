"""Result stores, chosen by URL (or ``django-db``)."""

from __future__ import annotations

from conveyor.exceptions import ConfigurationError
from conveyor.results.base import ResultStore, Stored
from conveyor.results.record import ResultRecord

__all__ = ["ResultRecord", "ResultStore", "Stored", "result_store_from_url"]


def result_store_from_url(url: str) -> ResultStore:
    """Open the store a URL names: ``sqlite://``, ``redis://``, ``memory://``, ``django-db``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else url
    if scheme == "memory":
        from conveyor.results.memory import MemoryResultStore

        return MemoryResultStore(url)
    if scheme == "sqlite":
        from conveyor.results.sqlite import SQLiteResultStore

        return SQLiteResultStore(url)
    if scheme in ("redis", "rediss", "unix"):
        from conveyor.results.redis import RedisResultStore

        return RedisResultStore(url)
    if scheme in ("django-db", "django"):
        from conveyor.contrib.django.results import DjangoResultStore

        return DjangoResultStore()
    raise ConfigurationError(
        f"result_backend {url!r}: unsupported scheme; use sqlite:///path.db, "
        "redis://host:port/db, memory:// or django-db"
    )
