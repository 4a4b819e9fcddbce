"""Every documentation page's marked examples, run as written (see runbook.py).

getting-started.md is run as a newcomer would: from a built wheel in a fresh
virtualenv, every step in order (startproject, the app module, settings, a
model, migrations, tasks, a worker process, a call from Django's shell, beat
sending a periodic task, the monitor answering with the account from the
environment, the page's own pytest test). Each other page runs in an empty
folder of its own with the same virtualenv; a page that needs a project says
so with ``<!-- docs-test: project getting-started.md -->`` and starts from
the one that page builds.

The pages run one after another in one test file on purpose: several start
the monitor on the port they show (5555), and two at once would collide.
When one fails, the page and the code have drifted apart: fix whichever is
wrong, never a copy of the page in the test (there is none: it reads the page).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.runbook import steps
from tests.docs.runner import DOCS, ROOT, Runner

PAGES = [DOCS / "getting-started.md", ROOT / "README.md", *(DOCS / name for name in (
    "operations.md", "periodic.md", "django.md", "testing.md", "switching-over.md",
    "canvas.md", "monitoring.md", "migrating-from-celery.md",
))]
# A page that lost most of its marks would still pass; these counts catch that.
MIN_STEPS = {"getting-started.md": 10, "operations.md": 6, "periodic.md": 8,
             "django.md": 12, "canvas.md": 7}
# Pages whose examples talk to Redis at the address they show: the test's own
# (flushed) database stands in for it.
NEEDS_REDIS = {"switching-over.md"}
SHOWN_REDIS = "redis://localhost:6379/0"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_runs_as_written(page_runner: Runner, page: Path,
                              request: pytest.FixtureRequest) -> None:
    if page.name in NEEDS_REDIS:
        page_runner.substitutions[SHOWN_REDIS] = request.getfixturevalue("redis_url")
    assert len(steps(page)) >= MIN_STEPS.get(page.name, 1), "the page lost its runnable steps"
    page_runner.run_page(page)
