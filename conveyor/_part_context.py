"""What a chord header leaves for its body besides its value: small maps of strings.

Only the header run that completes a chord sends the body, so the body's run
knows nothing of the others.  An integration that needs all of them (the
OpenTelemetry instrumentor links the body's span to every header's) registers
a provider here.  When a header adds its value to the join, the providers'
maps are stored with the value (the ``"h"`` key of the ``chord_add`` payload,
:func:`conveyor._workflow.encode_value`); when the join completes, the
body's messages carry every header's map, in header order, under
:data:`PARTS_HEADER`, so they reach ``self.request.headers``.

With no provider registered nothing is stored or sent: a chord costs what it
did before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("conveyor.worker")

PARTS_HEADER = "conveyor_chord_parts"

Provider = Callable[[], Mapping[str, str]]
_providers: list[Provider] = []


def add_provider(provider: Provider) -> None:
    """Call ``provider`` in each header run that joins a chord (idempotent)."""
    if provider not in _providers:
        _providers.append(provider)


def remove_provider(provider: Provider) -> None:
    if provider in _providers:
        _providers.remove(provider)


def collect() -> dict[str, str]:
    """The current header run's map: every provider's, merged (later ones win).

    A provider that raises is logged and left out: its integration loses a
    detail, the chord still joins (the header's value is already stored).
    """
    found: dict[str, str] = {}
    for provider in _providers:
        try:
            found.update({str(k): str(v) for k, v in provider().items()})
        except Exception:
            log.exception("chord part context provider %r raised; left out", provider)
    return found


def attach(headers: dict[str, Any], parts: Sequence[Mapping[str, str]]) -> None:
    """Put the chord headers' maps into one body message's ``headers``."""
    headers[PARTS_HEADER] = [dict(part) for part in parts]


def parts_of(headers: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """The maps a body message carries (``[]`` for any other message, or a malformed one)."""
    value = (headers or {}).get(PARTS_HEADER)
    if not isinstance(value, list):
        return []
    return [part for part in value if isinstance(part, dict)]
