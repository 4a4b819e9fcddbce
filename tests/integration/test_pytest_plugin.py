"""The pytest plugin: Celery's fixture names and Conveyor's, run by a real pytest.

Each case writes a small test module, as a project's test suite would have
it after renaming ``celery`` imports to ``conveyor``, and runs pytest on it
in a subprocess (the plugin is found through its ``pytest11`` entry point,
as it is in a project). Celery's meanings are from
``celery/contrib/pytest.py``: ``celery_config`` configures ``celery_app``,
``@pytest.mark.celery`` overrides it per test, ``celery_worker`` is a
worker in a thread (``solo`` pool by default) that has answered a ping
before the test starts, ``celery_session_worker`` lives for the session on
``celery_session_app``, and ``use_celery_app_trap`` makes any use of the
current app fail.
"""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)


def _run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_project=source)
    # pytest-django (loaded by entry point) would read the outer run's DJANGO_SETTINGS_MODULE.
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-p", "no:django", *args)


def test_celery_app_and_worker_run_a_task_through_the_real_path(
        pytester: pytest.Pytester) -> None:
    result = _run(pytester, '''
import pytest

@pytest.fixture(scope="session")
def celery_config():
    return {"task_default_queue": "tests", "task_ignore_result": False}

def test_add(celery_app, celery_worker):
    @celery_app.task(name="project.add")
    def add(x, y):
        return x + y
    assert celery_app.conf.task_default_queue == "tests"
    assert add.delay(2, 3).get(timeout=10) == 5

@pytest.mark.celery(task_default_queue="marked")
def test_mark_overrides_config(celery_app):
    assert celery_app.conf.task_default_queue == "marked"

def test_a_refused_argument_fails_as_in_production(celery_app, celery_worker):
    @celery_app.task(name="project.echo")
    def echo(value):
        return value
    with pytest.raises(Exception, match="value"):
        echo.delay(object())
''')
    result.assert_outcomes(passed=3)


def test_conveyor_names_and_session_worker(pytester: pytest.Pytester) -> None:
    result = _run(pytester, '''
import pytest
from conveyor import shared_task

@shared_task(name="project.mul")
def mul(x, y):
    return x * y

@pytest.fixture(scope="session")
def conveyor_worker_pool():
    return "threads"

@pytest.fixture(scope="session")
def conveyor_worker_parameters():
    return {"concurrency": 2}

def test_one(conveyor_session_app, conveyor_session_worker):
    assert conveyor_session_worker.worker.pool_name == "threads"
    assert mul.delay(6, 7).get(timeout=10) == 42

def test_two_same_worker(conveyor_session_app, conveyor_session_worker):
    assert conveyor_session_worker.worker.concurrency == 2
    assert conveyor_session_app.send_task("project.mul", (2, 2)).get(timeout=10) == 4

def test_fresh_app_per_test(conveyor_app, conveyor_session_app):
    assert conveyor_app is not conveyor_session_app
    assert conveyor_app.conf.broker_url != conveyor_session_app.conf.broker_url
''')
    result.assert_outcomes(passed=3)


def test_the_app_trap_fails_code_that_uses_the_current_app(pytester: pytest.Pytester) -> None:
    result = _run(pytester, '''
import pytest
from conveyor import _state

@pytest.fixture(scope="session")
def use_celery_app_trap():
    return True

def test_trapped(celery_app):
    with pytest.raises(RuntimeError, match="current app"):
        _state.current_app().conf
''')
    result.assert_outcomes(passed=1)
