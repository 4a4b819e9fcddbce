"""The public-surface check for the Django modules, which need Django configured
(this directory's conftest does that): see tests/unit/test_public_api.py."""

from tests.unit.test_public_api import test_public_names_are_exactly_the_listed_ones

__all__ = ["test_public_names_are_exactly_the_listed_ones"]
