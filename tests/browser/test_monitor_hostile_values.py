"""Issue 15, finding 3, in Chromium: pages still work when the stores hold hostile values.

A dead letter with NaN, one with a lone surrogate, one nested 6,000 deep
and one of 3 MB are listed on the Dead letters page (with a download link for
the one cut short) and can be discarded from it; the page of a task that
returned NaN renders.  SQLite only, with the monitor served in-process by
uvicorn: the stores are what matter here, and test_monitor_values.py covers
Redis through the API.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.brokers.base import Envelope
from conveyor.monitor.app import create_app
from conveyor.testing import run_worker

from .test_monitor_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = pytest.mark.browser
USER, PASSWORD = "ops", "pw-hostile"
LETTERS = {
    "nan": b'{"id": "n1", "task": "nobody.nan", "args": [NaN, Infinity], "v": 1}',
    "surrogate": b'{"id": "s1", "task": "nobody.\\ud800", "args": ["\\udfff"], "v": 1}',
    "deep": b'{"id": "d1", "task": "x", "args": [' + b"[" * 6000 + b"]" * 6000 + b"]}",
    "huge": json.dumps({"id": "h1", "task": "nobody.huge", "args": ["z" * 3_000_000]}).encode(),
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Conveyor, str]]:
    import uvicorn

    require_chromium()
    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    app = Conveyor("hostile-browser", broker=url, set_as_current=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(app, [f"{USER}:{PASSWORD}"]),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    app.close()


def test_pages_render_hostile_values(served: tuple[Conveyor, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    app, base = served

    @app.task(name="hostile.nan")
    def nan() -> float:
        return float("nan")

    app.broker.enqueue_many([Envelope(f"dl-{kind}", "default", body)
                             for kind, body in LETTERS.items()])
    with run_worker(app, concurrency=1) as worker:
        result = nan.delay()
        result.get(timeout=15)
        worker.join(30)
    errors: list[Any] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(error))
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(base + "/dead-letters")
        expect(page.locator("#dead tbody tr")).to_have_count(len(LETTERS), timeout=20_000)
        expect(page.locator("#dead")).to_contain_text("nobody.\\ud800")
        expect(page.locator("#dead")).to_contain_text("nested too deeply")
        links = page.locator("#dead a.download")  # for the letters cut short
        expect(links).to_have_count(2)
        hrefs = {links.nth(i).get_attribute("href") or "" for i in range(2)}
        assert {h.rsplit("id=", 1)[1] for h in hrefs} == {"dl-huge", "dl-deep"}
        page.locator("#dl-bulk button", has_text="Discard all in default").click()
        expect(page.locator("#toast")).to_contain_text(f"Discarded {len(LETTERS)}",
                                                       timeout=20_000)
        page.goto(f"{base}/tasks/{result.id}")
        expect(page.locator("#t-state")).to_have_text("SUCCESS", timeout=20_000)
        expect(page.locator("#t-result")).to_contain_text("NaN")
        browser.close()
    assert not errors, errors
