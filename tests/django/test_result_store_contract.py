"""The result store contract on ``result_backend = "django-db"``.

Here rather than in tests/contract because the store needs Django configured,
which ``tests/django/conftest.py`` does for this directory. The database is the
test database pytest-django creates (SQLite, or PostgreSQL under
``CONVEYOR_DJANGO_DB=postgres``, which ``test_postgres.py`` runs).
"""

from __future__ import annotations

import pytest

from tests.contract.result_store_contract import ResultStoreContract


class TestDjangoResultStore(ResultStoreContract):
    @pytest.fixture
    def url(self, transactional_db: None) -> str:
        return "django-db"
