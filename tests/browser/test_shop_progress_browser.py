"""The progress bar of ``conveyor.contrib.django.progress`` in headless Chromium, on
the example shop (``examples/shop``) with a real worker and ``runserver``.

The owner presses "Rebuild" and watches the bar: every value the page sets on
``aria-valuenow`` is recorded by a MutationObserver, and must climb from 0
through values in between to 100, ending in SUCCESS.  A second browser (a
stranger, other cookies) gets 404 for the same task's JSON and page.  The
failing run ends in FAILURE with the task's message, the bar left where the
task stopped.  Screenshots go to the test's folder, and with
``CONVEYOR_DOCS_SCREENSHOTS=1`` to ``docs/images/`` for docs/django.md.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_monitor_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium, wait_for

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop"
DOCS_IMAGES = ROOT / "docs" / "images"
WAIT_MS = 30_000

#: Runs before the page's own scripts: keeps every aria-valuenow the bar is given.
RECORD_VALUES = """
window.__seen = [];
new MutationObserver(function (changes) {
  changes.forEach(function (change) {
    if (change.attributeName === "aria-valuenow") {
      window.__seen.push(Number(change.target.getAttribute("aria-valuenow")));
    }
  });
}).observe(document, {attributes: true, subtree: true, attributeFilter: ["aria-valuenow"]});
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Shop:
    """A migrated shop in a scratch folder, a ``reports`` worker and ``runserver``."""

    def __init__(self, var: Path) -> None:
        self.var, self.port = var, _free_port()
        self.env = {**os.environ, "SHOP_VAR": str(var), "DJANGO_SETTINGS_MODULE": "shop.settings",
                    "PYTHONUNBUFFERED": "1"}
        self.env.pop("CONVEYOR_BROKER_URL", None)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        var.mkdir(parents=True)

    def run(self, name: str, *args: str) -> None:
        log = open(self.var / f"{name}.log", "wb")  # noqa: SIM115 - owned by Popen
        self.procs[name] = subprocess.Popen([sys.executable, *args], cwd=SHOP, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def start(self) -> None:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=SHOP,
                       env=self.env, check=True, timeout=120)
        self.run("worker", "-m", "conveyor", "-A", "shop", "worker", "-Q", "reports", "-c", "1",
                 "-l", "INFO")
        self.run("web", "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload")
        wait_for(self._listening, 30, "runserver to listen")

    def _listening(self) -> bool:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited early:\n{self.log(name)}"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log(self, name: str) -> str:
        path = self.var / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    require_chromium()
    running = Shop(tmp_path / "var")
    try:
        running.start()
        yield running
    finally:
        running.stop()
        for name in running.procs:
            print(f"--- {name} log ---\n{running.log(name)}")


@pytest.fixture
def browser() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              headless=True)
        yield instance
        instance.close()


def _shoot(page: Any, tmp_path: Path, name: str) -> None:
    folders = [tmp_path / "shots"]
    if os.environ.get("CONVEYOR_DOCS_SCREENSHOTS") == "1":
        folders.append(DOCS_IMAGES)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"django-progress-{name}.png"))


def _rebuild(page: Any, base: str, button: str) -> str:
    page.goto(f"{base}/reports/rebuild/")
    page.get_by_role("button", name=button, exact=True).click()
    page.wait_for_url(re.compile(r"/reports/rebuild/[0-9a-f-]{36}/$"))
    return str(page.url.rstrip("/").rsplit("/", 1)[-1])


def test_bar_climbs_to_success_fails_visibly_and_hides_from_strangers(
        shop: Shop, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    base = f"http://127.0.0.1:{shop.port}"
    owner = browser.new_context(viewport={"width": 900, "height": 400})
    owner.add_init_script(RECORD_VALUES)
    page = owner.new_page()

    task_id = _rebuild(page, base, "Rebuild")
    bar = page.get_by_role("progressbar", name="Catalogue rebuild")
    container = page.locator(f"[data-task-id='{task_id}']")
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[4-9]\d(\.\d+)?$"),
                                  timeout=WAIT_MS)
    _shoot(page, tmp_path, "running")
    expect(container).to_have_attribute("data-state", "SUCCESS", timeout=WAIT_MS)
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator(".conveyor-progress-message")).to_have_text("Done")
    seen = page.evaluate("window.__seen")
    assert seen[-1] == 100, seen
    assert seen == sorted(seen), f"the bar went backwards: {seen}"
    assert len({v for v in seen if 0 < v < 100}) >= 2, f"too few steps drawn: {seen}"
    _shoot(page, tmp_path, "done")

    assert owner.request.get(f"{base}/progress/{task_id}/").json()["state"] == "SUCCESS"
    stranger = browser.new_context()
    assert stranger.request.get(f"{base}/progress/{task_id}/").status == 404
    assert stranger.new_page().goto(f"{base}/reports/rebuild/{task_id}/").status == 404
    stranger.close()

    page.evaluate("window.__seen = []")
    failing_id = _rebuild(page, base, "Rebuild (the feed breaks part-way)")
    failing = page.locator(f"[data-task-id='{failing_id}']")
    expect(failing).to_have_attribute("data-state", "FAILURE", timeout=WAIT_MS)
    expect(failing.locator(".conveyor-progress-message")).to_have_text(
        "Failed: supplier feed broke at item 8")
    stopped = float(failing.get_by_role("progressbar").get_attribute("aria-valuenow"))
    assert stopped < 100, "a failed task's bar must not read as complete"
    _shoot(page, tmp_path, "failed")
    owner.close()
