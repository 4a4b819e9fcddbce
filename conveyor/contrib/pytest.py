"""pytest fixtures under Celery's names and Conveyor's: an app per test, a real worker.

Registered as a pytest plugin (the ``pytest11`` entry point), so a project's
tests that use ``celery_app`` / ``celery_worker`` keep working after the
imports are renamed, and new tests can say ``conveyor_app`` /
``conveyor_worker``. The two families are the same fixtures: each Celery name
defaults to its Conveyor twin, so overriding either one in a ``conftest.py``
works (override the name the tests use).

What they mean is Celery's (``celery/contrib/pytest.py``): ``*_config`` and
``*_parameters`` configure the app, ``@pytest.mark.celery(**settings)`` (or
``@pytest.mark.conveyor``) overrides settings for one test, ``*_includes``
are modules the worker imports, ``*_worker_pool`` defaults to ``solo``, and
``*_worker_parameters`` go to the worker. One difference on purpose: the
worker is Conveyor's real worker on the in-memory broker, so arguments and
results are encoded exactly as in production.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from conveyor import _state
from conveyor.app import Conveyor
from conveyor.testing import ThreadedWorker, make_test_app, start_worker


def pytest_configure(config: pytest.Config) -> None:
    for mark in ("celery", "conveyor"):
        config.addinivalue_line(
            "markers", f"{mark}(**settings): settings for this test's {mark}_app")


class AppTrap:
    """Stands in for the current app and refuses every use (``use_celery_app_trap``):
    code under test that reaches for the current app instead of the one it was
    given fails loudly."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"test depends on the current app (it read .{name}); "
                           "pass the app explicitly")


@contextmanager
def _test_app(request: pytest.FixtureRequest, config: Mapping[str, Any],
              parameters: Mapping[str, Any], enable_logging: bool,
              use_trap: bool) -> Iterator[Conveyor]:
    overrides: dict[str, Any] = {}
    for name in ("celery", "conveyor"):
        mark = request.node.get_closest_marker(name)
        if mark is not None:
            overrides.update(mark.kwargs)
    app = make_test_app(config={**config, **overrides}, **dict(parameters))
    if enable_logging:
        from conveyor.log import setup_logging

        setup_logging("INFO", app.conf.worker_log_format)
    previous = _state.swap_current(AppTrap() if use_trap else app)  # type: ignore[arg-type]
    try:
        yield app
    finally:
        _state.swap_current(previous)
        app.close()


@contextmanager
def _test_worker(app: Conveyor, includes: Sequence[str], class_tasks: Sequence[Any],
                 pool: str, parameters: Mapping[str, Any]) -> Iterator[ThreadedWorker]:
    for module in includes:
        importlib.import_module(module)
    for task in class_tasks:
        app.register_task(task)
    with start_worker(app, pool=pool, **dict(parameters)) as worker:
        yield worker


# -- settings fixtures (override these) --------------------------------------------

@pytest.fixture(scope="session")
def conveyor_config() -> Mapping[str, Any]:
    """Settings for the test app (Celery: ``celery_config``)."""
    return {}


@pytest.fixture(scope="session")
def conveyor_parameters() -> Mapping[str, Any]:
    """Arguments for ``Conveyor(...)`` itself (Celery: ``celery_parameters``)."""
    return {}


@pytest.fixture(scope="session")
def conveyor_enable_logging() -> bool:
    """True: set up logging as the worker command does (Celery: ``celery_enable_logging``)."""
    return False


@pytest.fixture(scope="session")
def use_conveyor_app_trap() -> bool:
    """True: any use of the *current* app raises (Celery: ``use_celery_app_trap``)."""
    return False


@pytest.fixture(scope="session")
def conveyor_includes() -> Sequence[str]:
    """Modules the worker imports before it starts (Celery: ``celery_includes``)."""
    return ()


@pytest.fixture(scope="session")
def conveyor_class_tasks() -> Sequence[Any]:
    """Class-based tasks registered with the session app (Celery: ``celery_class_tasks``)."""
    return ()


@pytest.fixture(scope="session")
def conveyor_worker_pool() -> str:
    """The worker's pool (Celery: ``celery_worker_pool``, ``solo`` by default)."""
    return "solo"


@pytest.fixture(scope="session")
def conveyor_worker_parameters() -> Mapping[str, Any]:
    """Arguments for the worker: queues, concurrency, perform_ping_check,
    shutdown_timeout, ... (Celery: ``celery_worker_parameters``)."""
    return {}


@pytest.fixture(scope="session")
def celery_config(conveyor_config: Mapping[str, Any]) -> Mapping[str, Any]:
    return conveyor_config


@pytest.fixture(scope="session")
def celery_parameters(conveyor_parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    return conveyor_parameters


@pytest.fixture(scope="session")
def celery_enable_logging(conveyor_enable_logging: bool) -> bool:
    return conveyor_enable_logging


@pytest.fixture(scope="session")
def use_celery_app_trap(use_conveyor_app_trap: bool) -> bool:
    return use_conveyor_app_trap


@pytest.fixture(scope="session")
def celery_includes(conveyor_includes: Sequence[str]) -> Sequence[str]:
    return conveyor_includes


@pytest.fixture(scope="session")
def celery_class_tasks(conveyor_class_tasks: Sequence[Any]) -> Sequence[Any]:
    return conveyor_class_tasks


@pytest.fixture(scope="session")
def celery_worker_pool(conveyor_worker_pool: str) -> str:
    return conveyor_worker_pool


@pytest.fixture(scope="session")
def celery_worker_parameters(
        conveyor_worker_parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    return conveyor_worker_parameters


# -- apps and workers --------------------------------------------------------------

@pytest.fixture
def conveyor_app(request: pytest.FixtureRequest, conveyor_config: Mapping[str, Any],
                 conveyor_parameters: Mapping[str, Any], conveyor_enable_logging: bool,
                 use_conveyor_app_trap: bool) -> Iterator[Conveyor]:
    """A fresh app for this test, current while it runs (unless trapped)."""
    with _test_app(request, conveyor_config, conveyor_parameters, conveyor_enable_logging,
                   use_conveyor_app_trap) as app:
        yield app


@pytest.fixture
def celery_app(request: pytest.FixtureRequest, celery_config: Mapping[str, Any],
               celery_parameters: Mapping[str, Any], celery_enable_logging: bool,
               use_celery_app_trap: bool) -> Iterator[Conveyor]:
    with _test_app(request, celery_config, celery_parameters, celery_enable_logging,
                   use_celery_app_trap) as app:
        yield app


@pytest.fixture
def conveyor_worker(conveyor_app: Conveyor, conveyor_includes: Sequence[str],
                    conveyor_worker_pool: str,
                    conveyor_worker_parameters: Mapping[str, Any]) -> Iterator[ThreadedWorker]:
    """A real worker in a thread on ``conveyor_app``, stopped when the test ends."""
    with _test_worker(conveyor_app, conveyor_includes, (), conveyor_worker_pool,
                      conveyor_worker_parameters) as worker:
        yield worker


@pytest.fixture
def celery_worker(celery_app: Conveyor, celery_includes: Sequence[str], celery_worker_pool: str,
                  celery_worker_parameters: Mapping[str, Any]) -> Iterator[ThreadedWorker]:
    with _test_worker(celery_app, celery_includes, (), celery_worker_pool,
                      celery_worker_parameters) as worker:
        yield worker


@pytest.fixture(scope="session")
def conveyor_session_app(request: pytest.FixtureRequest, conveyor_config: Mapping[str, Any],
                         conveyor_parameters: Mapping[str, Any], conveyor_enable_logging: bool,
                         use_conveyor_app_trap: bool) -> Iterator[Conveyor]:
    """One app for the whole session (for ``conveyor_session_worker``)."""
    with _test_app(request, conveyor_config, conveyor_parameters, conveyor_enable_logging,
                   use_conveyor_app_trap) as app:
        yield app


@pytest.fixture(scope="session")
def celery_session_app(request: pytest.FixtureRequest, celery_config: Mapping[str, Any],
                       celery_parameters: Mapping[str, Any], celery_enable_logging: bool,
                       use_celery_app_trap: bool) -> Iterator[Conveyor]:
    with _test_app(request, celery_config, celery_parameters, celery_enable_logging,
                   use_celery_app_trap) as app:
        yield app


@pytest.fixture(scope="session")
def conveyor_session_worker(
        conveyor_session_app: Conveyor, conveyor_includes: Sequence[str],
        conveyor_class_tasks: Sequence[Any], conveyor_worker_pool: str,
        conveyor_worker_parameters: Mapping[str, Any]) -> Iterator[ThreadedWorker]:
    """One worker for the whole session, on ``conveyor_session_app``."""
    with _test_worker(conveyor_session_app, conveyor_includes, conveyor_class_tasks,
                      conveyor_worker_pool, conveyor_worker_parameters) as worker:
        yield worker


@pytest.fixture(scope="session")
def celery_session_worker(
        celery_session_app: Conveyor, celery_includes: Sequence[str],
        celery_class_tasks: Sequence[Any], celery_worker_pool: str,
        celery_worker_parameters: Mapping[str, Any]) -> Iterator[ThreadedWorker]:
    with _test_worker(celery_session_app, celery_includes, celery_class_tasks,
                      celery_worker_pool, celery_worker_parameters) as worker:
        yield worker

__all__: list[str] = []
