"""docs/getting-started.md, run as a newcomer would: from a built wheel in a
fresh virtualenv, every marked step in order (startproject, the app module,
settings, a model, migrations, tasks, a worker process, a call from
Django's shell, beat sending a periodic task, the monitor answering with
the account from the environment, the page's own pytest test).

When this fails, the page and the code have drifted apart: fix whichever is
wrong, never the test's copy of the page (there is none: it reads the page).
"""

from __future__ import annotations

import pytest

from tests.docs.runner import DOCS, Runner

PAGE = DOCS / "getting-started.md"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_getting_started_page_runs_as_written(page_runner: Runner) -> None:
    assert page_runner.run_page(PAGE) >= 10, "the page lost its runnable steps"
