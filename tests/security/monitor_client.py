"""The real monitor app over real stores, read through Starlette's test client."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from conveyor import Conveyor
from conveyor.monitor.app import create_app

ADMIN = ("admin", "pw-admin")
ACT = {"X-Conveyor-Action": "1"}


@contextmanager
def monitor(app: Conveyor) -> Iterator[TestClient]:
    asgi = create_app(app, [f"{ADMIN[0]}:{ADMIN[1]}"])
    with TestClient(asgi, raise_server_exceptions=False) as client:
        client.auth = ADMIN
        yield client


def strict(text: str) -> Any:
    """Parse as a browser does: NaN and Infinity are not JSON."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} in a response: browsers cannot parse it")

    return json.loads(text, parse_constant=refuse)
