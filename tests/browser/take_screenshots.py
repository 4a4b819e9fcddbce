"""Take the screenshots in docs/images/ against a system that has run for a while.

    .venv/bin/python -m tests.browser.take_screenshots --minutes 8

Starts the browser test's worker, beat and monitor (``tests/browser/monitor_app.py``)
on a fresh SQLite file, sends a steady, varied load for a few minutes so the
charts have a history, then visits every page in headless Chromium
(``/usr/bin/chromium``) and writes ``docs/images/monitor-*.png``.  Every
number on them comes from tasks that really ran.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from conveyor import Conveyor
from conveyor.brokers.base import Envelope
from tests.browser.test_monitor_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DOCS_IMAGES,
    PASSWORD,
    USER,
    Processes,
    wait_for,
)


def send_load(client: Conveyor, minutes: float, rng: random.Random) -> list[str]:
    """A wavy load with every outcome; returns the ids of the failed charges."""
    declined: list[str] = []
    started = time.monotonic()
    order = 0
    while time.monotonic() - started < minutes * 60:
        phase = (time.monotonic() - started) / 90
        rate = 3 + 2.5 * math.sin(phase * math.pi)
        for _ in range(max(1, round(rate))):
            order += 1
            client.send_task("shop.add", (order % 13, rng.randint(1, 9)))
            result = client.send_task("shop.charge_card", (order, round(rng.uniform(5, 80), 2)))
            if order % 7 == 0:
                declined.append(result.id)
        if rng.random() < 0.15:
            client.send_task("shop.send_receipt", (order,))
        if rng.random() < 0.05:
            client.send_task("shop.add", (1, 1), countdown=rng.uniform(20, 60))
        if rng.random() < 0.02:
            for _ in range(40):  # a burst: the queue chart shows it drain
                client.send_task("shop.add", (rng.randint(0, 9), 1))
        time.sleep(1)
    return declined


def screenshots(base: str, client: Conveyor, declined: list[str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                      viewport={"width": 1440, "height": 900})
        page = context.new_page()

        def shot(path: str, name: str, ready: str) -> None:
            page.goto(base + path)
            expect(page.locator(ready).first).to_be_visible(timeout=20_000)
            page.wait_for_timeout(1200)
            page.screenshot(path=str(DOCS_IMAGES / f"monitor-{name}.png"), full_page=True)

        shot("/", "overview", "#chart-throughput svg")
        shot("/workers", "workers", "#workers td")
        shot("/queues", "queues", "#queue-charts svg")
        client.send_task("shop.import_catalog", (60, 0.25))
        page.goto(base + "/tasks")
        expect(page.locator("#running [role=progressbar]").first).to_be_visible(timeout=20_000)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(DOCS_IMAGES / "monitor-tasks.png"), full_page=False)
        shot(f"/tasks/{declined[-1]}", "task", "#t-traceback")
        shot("/dead-letters", "dead-letters", "#dead td a")
        shot("/schedules", "schedules", "#entries td")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    options = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="conveyor-shots-"))
    url = f"sqlite:///{scratch / 'shop.db'}"
    system = Processes(url, scratch)
    system.start_all()
    client = Conveyor("client", broker=url, set_as_current=False)
    try:
        client.send_task("shop.sync_inventory", ("berlin",))
        client.broker.enqueue(Envelope(id="garbled-0001", queue="default", body=b"\x00not json"))
        declined = send_load(client, options.minutes, random.Random(7))
        wait_for(lambda: _settled(client), 120, "the queue to drain")
        screenshots(f"http://127.0.0.1:{system.port}", client, declined)
    finally:
        system.stop()
        client.close()
    print(f"screenshots in {DOCS_IMAGES}; logs in {scratch}")


def _settled(client: Conveyor) -> Any:
    return all(s.ready == 0 for s in client.broker.stats())


if __name__ == "__main__":
    main()
