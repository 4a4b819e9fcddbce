"""The chord completer's repeat (docs/decisions/0002-canvas.md), on the django-db store."""

from __future__ import annotations

import pytest

from tests.contract.test_result_contract import (  # noqa: F401 - collected here
    store,
    test_chord_completer_repeat_gets_the_parts_again,
    test_failed_chord_never_fires_for_a_repeat,
)


@pytest.fixture
def backend_url(transactional_db: None) -> str:
    return "django-db"
