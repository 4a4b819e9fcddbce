"""The monitor in headless Chromium, against real worker, beat and monitor processes.

For SQLite, Redis and PostgreSQL: the login prompt, every page showing numbers from tasks
this test ran, a dead letter replayed from the page and then succeeding, a
queued task revoked and a running one terminated from the page.

Uses Debian's ``/usr/bin/chromium`` (never a downloaded browser); without it
the test skips on a laptop and fails under ``CI=true``.  With
``CONVEYOR_DOCS_SCREENSHOTS=1`` the SQLite run also writes the screenshots
shown in ``docs/monitoring.md`` to ``docs/images/``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, states
from conveyor.brokers.base import Envelope
from tests.conftest import IN_CI

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
APP = "tests.browser.monitor_app"
USER, PASSWORD = "ops", "correct-horse"
DOCS_IMAGES = ROOT / "docs" / "images"
WAIT_MS = 20_000
EMPTY = "\u2013"  # what the pages show before data arrives


def require_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    message = f"{CHROMIUM} is missing (apt-get install chromium)"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Processes:
    """The worker, beat and monitor subprocesses, with their logs."""

    def __init__(self, url: str, scratch: Path) -> None:
        self.url, self.scratch = url, scratch
        self.port = free_port()
        self.env = {**os.environ, "MONITOR_TEST_BROKER": url, "MONITOR_TEST_DIR": str(scratch),
                    "PYTHONPATH": str(ROOT)}
        self.env.pop("CONVEYOR_BROKER_URL", None)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.scratch / f"{name}.log", "wb")  # noqa: SIM115 - owned by Popen
        cmd = [sys.executable, "-m", "conveyor", "-A", APP, *args]
        self.procs[name] = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def start_all(self) -> None:
        self.start("worker", "worker", "-P", "prefork", "-c", "2", "-l", "INFO")
        self.start("beat", "beat", "-l", "INFO")
        self.start("monitor", "monitor", "--port", str(self.port), "--address", "127.0.0.1",
                   "--basic-auth", f"{USER}:{PASSWORD}", "--readonly-auth", "viewer:look")
        wait_for(self._monitor_up, 30, "the monitor to listen")

    def _monitor_up(self) -> bool:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited early:\n{self.log(name)}"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log(self, name: str) -> str:
        path = self.scratch / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop_one(self, name: str) -> None:
        """A warm shutdown of one process (its worker says goodbye: offline at once)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


OWN_REDIS_DB = 14


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def process_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLite, PostgreSQL in a schema of its own (broker, results, events and beat in
    one database), or Redis in a database of its own: the worker, beat and monitor
    are separate processes, and must not meet other suites' messages in the shared one."""
    fixture = "pg_url" if request.param == "postgres" else f"{request.param}_url"
    url = str(request.getfixturevalue(fixture))
    if request.param in ("sqlite", "postgres"):
        yield url
        return
    import redis

    own = url.rsplit("/", 1)[0] + f"/{OWN_REDIS_DB}"
    client = redis.Redis.from_url(own)
    client.flushdb()
    yield own
    client.flushdb()
    client.close()


@pytest.fixture
def system(process_url: str, tmp_path: Path) -> Iterator[Processes]:
    require_chromium()
    running = Processes(process_url, tmp_path)
    running.start_all()
    try:
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


class Shots:
    """Screenshots into the test's folder, and into docs/images/ when asked."""

    def __init__(self, page: Any, tmp_path: Path, docs: bool) -> None:
        self.page, self.dirs = page, [tmp_path / "shots"]
        if docs:
            self.dirs.append(DOCS_IMAGES)
        for folder in self.dirs:
            folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> None:
        self.page.wait_for_timeout(400)  # let the last refresh paint
        for folder in self.dirs:
            self.page.screenshot(path=str(folder / f"monitor-{name}.png"), full_page=True)


def test_monitor_in_a_browser(system: Processes, browser: Any, process_url: str,
                              tmp_path: Path) -> None:
    from playwright.sync_api import expect

    base = f"http://127.0.0.1:{system.port}"
    client = Conveyor("client", broker=process_url, set_as_current=False)

    _login_is_required(browser, base)
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                  viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    docs = os.environ.get("CONVEYOR_DOCS_SCREENSHOTS") == "1" and process_url.startswith("sqlite")
    shots = Shots(page, tmp_path, docs)
    system.start("spare", "worker", "-n", "spare@%h", "-Q", "spare", "-P", "solo", "-l", "INFO")
    sent = _run_the_shop(client)
    _revoke_from_the_page(page, base, sent["delayed"], expect)
    _wait_settled(client, sent)

    _tasks_page_shows_progress(page, base, client, shots, expect)
    _dead_letter_replayed_from_the_page(page, base, client, sent["dead"], shots, expect)
    _terminate_from_the_page(page, base, client, expect)
    _overview_answers_is_it_working(page, base, system, client, shots, expect)
    _overview_shows_the_numbers(page, base, shots, expect)
    _workers_page(page, base, shots, expect)
    _queues_page(page, base, shots, expect)
    _task_detail(page, base, sent["declined"], shots, expect)
    _schedules_page(page, base, shots, expect)
    _revoked_task_was_skipped(page, base, client, sent["delayed"], expect)

    viewer = browser.new_context(http_credentials={"username": "viewer", "password": "look"})
    viewer_page = viewer.new_page()
    viewer_page.goto(f"{base}/tasks/{sent['declined']}")
    expect(viewer_page.locator("[data-action=retry]")).to_be_hidden()
    viewer.close()
    context.close()
    client.close()


def _collector(into: list[Any]) -> Callable[[Any], None]:
    """A real function (Playwright cannot take a bound builtin like list.append)."""
    def collect(item: Any) -> None:
        into.append(item)

    return collect


def _login_is_required(browser: Any, base: str) -> None:
    """The login prompt: a Basic challenge on every page, API call and asset.

    Headless Chromium cannot show the prompt: without credentials it fails the
    navigation with ERR_INVALID_AUTH_CREDENTIALS after the 401 challenge; with
    wrong ones it lands on the 401.
    """
    from playwright.sync_api import Error as PlaywrightError

    for credentials in (None, {"username": USER, "password": "nope"}):
        context = browser.new_context(http_credentials=credentials)
        page = context.new_page()
        seen: list[Any] = []
        page.on("response", _collector(seen))
        try:
            response = page.goto(base + "/")
            assert response is not None and response.status == 401
        except PlaywrightError as exc:  # no credentials: the prompt headless cannot show
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
        assert [(r.status, r.headers["www-authenticate"]) for r in seen][:1] == [
            (401, 'Basic realm="Conveyor monitor"')]
        for path in ("/", "/api/overview", "/metrics", "/static/monitor.js", "/tasks/x"):
            answer = context.request.get(base + path)
            assert answer.status == 401 and "Throughput" not in answer.text()
        context.close()


def _run_the_shop(client: Conveyor) -> dict[str, Any]:
    """Tasks with every outcome, and one delayed task to revoke before it is due."""
    delayed = client.send_task("shop.add", (100, 1), countdown=10)
    adds = [client.send_task("shop.add", (i, i)) for i in range(12)]
    charges = [client.send_task("shop.charge_card", (order, 10.0 * order))
               for order in range(1, 9)]
    receipts = [client.send_task("shop.send_receipt", (order,)) for order in (1, 2)]
    dead = client.send_task("shop.sync_inventory", ("berlin",))
    client.broker.enqueue(Envelope(id="garbled-0001", queue="default", body=b"\x00not json"))
    return {"delayed": delayed.id, "dead": dead.id, "declined": charges[6].id,
            "waits": [*adds, *charges, *receipts]}


def _wait_settled(client: Conveyor, sent: dict[str, Any]) -> None:
    for result in sent["waits"]:
        result.get(timeout=60, propagate=False)
    wait_for(lambda: _state(client, sent["dead"]) == states.FAILURE, 30, "the dead letter")


def _state(client: Conveyor, task_id: str) -> str | None:
    stored = client.backend.get(task_id)
    return stored.state if stored else None


def _tasks_page_shows_progress(page: Any, base: str, client: Conveyor, shots: Shots,
                               expect: Any) -> None:
    slow = client.send_task("shop.import_catalog", (40,))
    page.goto(base + "/tasks")
    bar = page.locator(f"#running tr:has(a[href='/tasks/{slow.id}']) [role=progressbar]")
    expect(bar).to_be_visible(timeout=WAIT_MS)
    wait_for(lambda: int(bar.get_attribute("aria-valuenow") or 0) >= 10, 20, "progress")
    expect(page.locator("#tasks tbody tr").first).to_be_visible()
    expect(page.locator("#tasks tbody")).to_contain_text("shop.charge_card")
    page.select_option("select[name=state]", "FAILURE")
    page.click("#search button[type=submit]")
    expect(page.locator("#tasks tbody tr")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#tasks tbody")).to_contain_text("shop.charge_card")
    page.select_option("select[name=state]", "")
    page.click("#search button[type=submit]")
    shots.take("tasks")


def _revoke_from_the_page(page: Any, base: str, task_id: str, expect: Any) -> None:
    """Revoke a task still waiting for its countdown; the worker skips it when due."""
    page.goto(f"{base}/tasks/{task_id}")
    expect(page.locator("#t-missing")).to_be_visible(timeout=WAIT_MS)  # not run yet
    page.click("[data-action=revoke]")
    expect(page.locator("#toast")).to_contain_text("revoked", timeout=WAIT_MS)
    expect(page.locator("#t-timeline")).to_contain_text(f"revoked by {USER}", timeout=WAIT_MS)


def _revoked_task_was_skipped(page: Any, base: str, client: Conveyor, task_id: str,
                              expect: Any) -> None:
    page.goto(f"{base}/tasks/{task_id}")
    expect(page.locator("#t-state")).to_have_text("REVOKED", timeout=30_000)
    assert _state(client, task_id) == states.REVOKED


def _dead_letter_replayed_from_the_page(page: Any, base: str, client: Conveyor, task_id: str,
                                        shots: Shots, expect: Any) -> None:
    page.goto(base + "/dead-letters")
    row = page.locator(f"#dead tr:has(a[href='/tasks/{task_id}'])")
    expect(row).to_contain_text("410 Gone", timeout=WAIT_MS)
    expect(page.locator("#dead")).to_contain_text("undecodable message")
    shots.take("dead-letters")
    row.get_by_role("button", name="Replay").click()
    expect(page.locator("#toast")).to_contain_text("Replayed 1", timeout=WAIT_MS)
    expect(row).to_have_count(0, timeout=WAIT_MS)
    wait_for(lambda: _state(client, task_id) == states.SUCCESS, 30, "the replayed task to succeed")
    page.goto(f"{base}/tasks/{task_id}")
    expect(page.locator("#t-state")).to_have_text("SUCCESS", timeout=WAIT_MS)
    expect(page.locator("#t-result")).to_contain_text("berlin synced")
    expect(page.locator("#t-timeline")).to_contain_text("replayed from dead letters by ops")


def _terminate_from_the_page(page: Any, base: str, client: Conveyor, expect: Any) -> None:
    long = client.send_task("shop.rebuild_index", (120,))
    page.goto(f"{base}/tasks/{long.id}")
    expect(page.locator("#t-state")).to_have_text("STARTED", timeout=WAIT_MS)
    page.click("[data-action=terminate]")
    expect(page.locator("#t-state")).to_have_text("REVOKED", timeout=30_000)
    expect(page.locator("#t-timeline")).to_contain_text(f"terminated by {USER}")


def _overview_answers_is_it_working(page: Any, base: str, system: Processes, client: Conveyor,
                                    shots: Shots, expect: Any) -> None:
    """The overview's top: one worker online and one that stopped, a queue nobody
    consumes with its oldest message ageing, the dead letter left, beat's leader and
    its next ticks; each part links to its page (issue 23, item 5)."""
    page.goto(base + "/")
    workers = page.locator("#h-worker-list")
    expect(workers).to_contain_text("spare@", timeout=WAIT_MS)  # heard from while it ran
    system.stop_one("spare")
    client.send_task("shop.add", (40, 2), queue="reports")  # no worker consumes "reports"
    expect(page.locator("#h-workers")).to_have_text("1 online", timeout=WAIT_MS)
    expect(page.locator("#h-workers-sub")).to_have_text("1 offline in the last hour")
    expect(workers.locator("tbody tr.offline")).to_contain_text("spare@")
    expect(workers.locator("tbody tr:not(.offline)")).to_contain_text("online")
    reports = page.locator("#h-queues tr:has(a:text-is('reports'))")
    expect(reports.locator("td").nth(1)).to_have_text("1", timeout=WAIT_MS)
    wait_for(lambda: reports.locator("td").nth(2).inner_text().endswith(" s")
             and float(reports.locator("td").nth(2).inner_text()[:-2]) >= 1.0,
             20, "the waiting message's age to grow past a second")
    expect(page.locator("#h-oldest")).to_contain_text("oldest waited")
    default = page.locator("#h-queues tr:has(a:text-is('default'))")
    expect(default.locator("td").nth(5)).to_have_text("1")  # the garbled message stays dead
    expect(page.locator("#h-dead")).to_have_text("1")
    expect(page.locator("#h-beat")).not_to_have_text(EMPTY, timeout=WAIT_MS)
    expect(page.locator("#h-beat")).not_to_have_text("none")
    ticks = page.locator("#h-ticks tbody")
    expect(ticks).to_contain_text("refresh-exchange-rates")
    expect(ticks).to_contain_text("nightly-report")
    expect(page.locator("#h-errors")).to_be_hidden()
    for card, target in (("#h-workers-card", "/workers"), ("#h-waiting-card", "/queues"),
                         ("#h-dead-card", "/dead-letters"), ("#h-beat-card", "/schedules")):
        assert page.locator(card).get_attribute("href") == target
    shots.take("overview-health")
    page.click("#h-dead-card")
    expect(page).to_have_url(base + "/dead-letters")


def _overview_shows_the_numbers(page: Any, base: str, shots: Shots, expect: Any) -> None:
    page.goto(base + "/")
    add_row = page.locator("#by-task tr:has(a:text-is('shop.add'))")
    # shop.add: 12 succeeded and 1 revoked; charge_card: 7 succeeded, 1 failed.
    expect(add_row.locator("td").nth(1)).to_have_text("13", timeout=WAIT_MS)
    expect(add_row.locator("td").nth(2)).to_have_text("12")
    expect(add_row.locator("td").nth(5)).to_have_text("1")
    card_row = page.locator("#by-task tr:has(a:text-is('shop.charge_card'))")
    expect(card_row.locator("td").nth(3)).to_have_text("1")
    receipt_row = page.locator("#by-task tr:has(a:text-is('shop.send_receipt'))")
    expect(receipt_row.locator("td").nth(4)).to_have_text("2")
    expect(page.locator("#c-failure")).not_to_have_text(EMPTY)
    assert int(page.locator("#c-success").inner_text().replace(",", "")) >= 12 + 7 + 2
    expect(page.locator("#chart-throughput svg rect").first).to_be_attached()
    expect(page.locator("#chart-runtime svg path").first).to_be_attached()
    shots.take("overview")


def _workers_page(page: Any, base: str, shots: Shots, expect: Any) -> None:
    page.goto(base + "/workers")
    row = page.locator("#workers tbody tr").first
    expect(row).to_contain_text("online", timeout=WAIT_MS)
    expect(row).to_contain_text("prefork")
    processed = int(row.locator("td").nth(8).inner_text().replace(",", ""))
    assert processed >= 25
    assert re.search(r"\d+\.\d MiB", row.inner_text())
    shots.take("workers")


def _queues_page(page: Any, base: str, shots: Shots, expect: Any) -> None:
    page.goto(base + "/queues")
    row = page.locator("#queues tr:has(td:text-is('default'))")
    expect(row).to_be_visible(timeout=WAIT_MS)
    expect(row.locator("td").nth(5)).to_have_text("1")  # the garbled message stays dead
    expect(page.locator("#queue-charts svg").first).to_be_attached(timeout=WAIT_MS)
    shots.take("queues")


def _task_detail(page: Any, base: str, task_id: str, shots: Shots, expect: Any) -> None:
    page.goto(f"{base}/tasks/{task_id}")
    expect(page.locator("#t-state")).to_have_text("FAILURE", timeout=WAIT_MS)
    expect(page.locator("#t-traceback")).to_contain_text("card declined for order 7")
    expect(page.locator("#t-args")).to_contain_text("70")
    expect(page.locator("#t-timeline")).to_contain_text("STARTED")
    shots.take("task")


def _schedules_page(page: Any, base: str, shots: Shots, expect: Any) -> None:
    page.goto(base + "/schedules")
    expect(page.locator("#entries")).to_contain_text("refresh-exchange-rates", timeout=WAIT_MS)
    expect(page.locator("#b-holder")).not_to_have_text(EMPTY, timeout=WAIT_MS)
    expect(page.locator("#b-holder")).not_to_contain_text("nobody", timeout=WAIT_MS)
    # The scheduler the running beat uses, said as such (issue 16).
    expect(page.locator("#b-scheduler")).to_have_text("SettingsScheduler", timeout=WAIT_MS)
    expect(page.locator("#b-scheduler-from")).to_contain_text("running beat")
    shots.take("schedules")
