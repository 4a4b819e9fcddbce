"""How ``-P gevent`` is found on the command line and refused where it cannot run.

Celery patches in its command-line entry when ``-P gevent``/``-P eventlet``
is given (``celery/__init__.py`` ``maybe_patch_concurrency`` reads ``-P``,
``--pool`` and ``--pool=``); Conveyor starts the command again, patched first
(``conveyor/_greenlets.py``).  These tests run in an unpatched process.
"""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor._config import Settings
from conveyor._greenlets import patched, reexec_if_needed, requested_pool
from conveyor.exceptions import ConfigurationError
from conveyor.worker import Worker


@pytest.mark.parametrize("argv", [
    ["conveyor", "-A", "proj", "worker", "-P", "gevent", "-c", "200"],
    ["conveyor", "-A", "proj", "worker", "--pool", "gevent"],
    ["conveyor", "-A", "proj", "worker", "--pool=gevent"],
    ["conveyor", "-A", "proj", "worker", "-Pgevent"],
])
def test_every_spelling_of_the_pool_flag_is_found(argv: list[str]) -> None:
    assert requested_pool(argv) == "gevent"


def test_other_commands_and_pools_are_left_alone() -> None:
    assert requested_pool(["conveyor", "-A", "proj", "inspect", "-P", "gevent"]) is None
    assert requested_pool(["conveyor", "-A", "proj", "worker", "-P", "threads"]) == "threads"
    assert requested_pool(["conveyor", "-A", "proj", "worker"]) is None
    # Nothing to do for them: this returns instead of replacing the test process.
    reexec_if_needed(["conveyor", "-A", "proj", "worker", "-P", "threads"])
    assert not patched()


def test_the_setting_accepts_gevent_but_an_unpatched_process_refuses_it() -> None:
    """``worker_pool='gevent'`` without ``-P gevent``: Celery would run unpatched
    and block; Conveyor says how to start it instead."""
    Settings().update({"worker_pool": "gevent"})
    app = Conveyor("greenlets", broker="memory://greenlet-boot", set_as_current=False)
    app.conf.update({"worker_pool": "gevent"})
    with pytest.raises(ConfigurationError, match=r"start it with `conveyor worker -P gevent`"):
        Worker(app)


def test_eventlet_is_refused_naming_gevent() -> None:
    app = Conveyor("greenlets", broker="memory://greenlet-boot", set_as_current=False)
    with pytest.raises(ConfigurationError, match=r"eventlet is deprecated upstream. Use -P gevent"):
        Worker(app, pool="eventlet")


def test_the_patched_interpreter_keeps_warning_and_x_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -W error -X dev -m conveyor worker -P gevent`` starts the same
    interpreter again: the options it was given go along."""
    import sys

    from conveyor import _greenlets

    monkeypatch.setattr(sys, "warnoptions", ["error::DeprecationWarning"])
    monkeypatch.setattr(sys, "_xoptions", {"dev": True, "importtime": "0"})
    assert _greenlets._interpreter_options() == [
        "-Werror::DeprecationWarning", "-Xdev", "-Ximporttime=0"]
