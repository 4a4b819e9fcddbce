"""Fixtures shared by the process tests here; each module picks its own ``url``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import Conveyor


@pytest.fixture
def client(url: str) -> Iterator[Conveyor]:
    """An app that sends to (and reads from) the module's broker ``url``."""
    app = Conveyor("client", broker=url, set_as_current=False)
    yield app
    app.close()
