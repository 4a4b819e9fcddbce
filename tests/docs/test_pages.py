"""Every documentation page's marked examples, run as written (see runbook.py).

Each page runs in an empty folder of its own with the docs virtualenv (the
built wheel, installed as the pages say); a page that needs a project says
so with ``<!-- docs-test: project getting-started.md -->`` and starts from
the one that page builds. getting-started.md has its own test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.runbook import steps
from tests.docs.runner import DOCS, ROOT, Runner

PAGES = [ROOT / "README.md", *(DOCS / name for name in (
    "operations.md", "periodic.md", "django.md", "testing.md", "switching-over.md",
    "canvas.md",
))]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


# Pages whose examples talk to Redis at the address they show: the test's own
# (flushed) database stands in for it.
NEEDS_REDIS = {"switching-over.md"}
SHOWN_REDIS = "redis://localhost:6379/0"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_runs_as_written(page_runner: Runner, page: Path,
                              request: pytest.FixtureRequest) -> None:
    if page.name in NEEDS_REDIS:
        page_runner.substitutions[SHOWN_REDIS] = request.getfixturevalue("redis_url")
    assert steps(page), f"{page} has no marked steps"
    page_runner.run_page(page)
