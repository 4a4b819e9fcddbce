"""Datetimes between Conveyor (aware UTC) and the database (per the project's USE_TZ)."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.utils import timezone


def aware(value: datetime) -> datetime:
    """A database datetime as an aware one (naive means TIME_ZONE when USE_TZ is off)."""
    if timezone.is_naive(value):
        return timezone.make_aware(value)
    return value


def to_db(value: datetime) -> datetime:
    """An aware datetime as the database stores it under the project's USE_TZ."""
    if settings.USE_TZ:
        return value
    return timezone.make_naive(value)
