"""``make demo``: the example shop, end to end, on SQLite, in well under a minute.

``make demo PG=1`` (``run_demo.py --postgres [URL]``) runs the same on
PostgreSQL instead: the shop's tables and its queue (the broker, schema
``conveyor``) in one database, ``conveyor_demo`` on 127.0.0.1:5432 unless
a URL is given, dropped and created afresh at every run.

What it does, in order:

1. resets ``examples/shop/var/`` and migrates a fresh database (a SQLite
   file, or the PostgreSQL database), with an admin user (admin / admin);
2. serves a flaky stock feed on a local port (the first two requests fail);
3. starts a worker per queue (default, orders, reports), beat with the
   database scheduler, and the Django development server, as subprocesses
   (``python -m conveyor -A shop worker -Q orders ...``);
4. sends work that exercises what a Celery + Django project uses: on-commit
   welcome e-mails (idempotent), a feed sync that retries on network errors,
   a payment with retries and exponential backoff, the bulk order pipeline
   (chord, then a batch step, then a group), a report on its own queue, a
   ``django.tasks`` task, and static plus database periodic schedules;
5. waits for each outcome with a bounded poll, prints what happened and where
   to look, stops every process it started, and exits non-zero if anything
   did not happen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHOP = HERE / "shop"
VAR = Path(os.environ.get("SHOP_VAR") or SHOP / "var")  # the tests run it elsewhere
LOGS = VAR / "logs"
STARTED = time.monotonic()
BUDGET = 50.0  # seconds for the scenarios; setup and shutdown come on top

QUEUES = {"default": 2, "orders": 2, "reports": 1}
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/conveyor_demo"
FEED_FAILURES = 2
STOCK = {"TEA-1": 50, "MUG-1": 3, "PEN-1": 0}


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.1f}s] {text}", flush=True)


# --------------------------------------------------------------------------- the stock feed


class FlakyFeed(BaseHTTPRequestHandler):
    """Serves stock levels; answers 503 to the first ``FEED_FAILURES`` requests."""

    hits = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with FlakyFeed.lock:
            FlakyFeed.hits += 1
            failing = FlakyFeed.hits <= FEED_FAILURES
        if failing:
            self.send_error(503, "feed warming up")
            return
        body = json.dumps({"stock": STOCK}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def start_feed() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyFeed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/stock.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- processes


class Processes:
    """The subprocesses this demo starts; each in its own session, all stopped at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.running[name] = subprocess.Popen(
            [sys.executable, *args], cwd=SHOP, env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def dead(self) -> list[str]:
        return [name for name, proc in self.running.items() if proc.poll() is not None]

    def stop(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.running.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_for(check: Callable[[], Any], timeout: float) -> Any:
    """Poll ``check`` until it returns something truthy; None after ``timeout``."""
    deadline = min(time.monotonic() + timeout, STARTED + BUDGET + 20)
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    return None


# --------------------------------------------------------------------------- setup


def fresh_postgres_database(url: str) -> None:
    """Drop the demo's database (and whoever is still connected) and create it empty."""
    import psycopg
    from psycopg import conninfo, sql

    name = conninfo.conninfo_to_dict(url).get("dbname")
    if not name or name in ("postgres", "template0", "template1"):
        raise SystemExit(f"--postgres: name a database of the demo's own, not {name!r}")
    with psycopg.connect(conninfo.make_conninfo(url, dbname="postgres"),
                         autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup(feed_url: str, database_url: str | None) -> None:
    shutil.rmtree(VAR / "logs", ignore_errors=True)
    shutil.rmtree(VAR / "mail", ignore_errors=True)
    for name in ("shop.sqlite3", "broker.db"):
        for suffix in ("", "-wal", "-shm"):
            (VAR / f"{name}{suffix}").unlink(missing_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    if database_url:
        fresh_postgres_database(database_url)
        os.environ["SHOP_DATABASE_URL"] = database_url
    else:
        os.environ.pop("SHOP_DATABASE_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "shop.settings"
    os.environ["SHOP_VAR"] = str(VAR)
    os.environ["SHOP_INVENTORY_FEED"] = feed_url
    sys.path.insert(0, str(SHOP))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from django.contrib.auth.models import User

    User.objects.create_superuser("admin", "admin@example.com", "admin")
    seed()


def seed() -> None:
    from orders.models import Product

    Product.objects.bulk_create([
        Product(sku="TEA-1", name="Tea, 100 g", price="4.50"),
        Product(sku="MUG-1", name="Mug", price="12.00"),
        Product(sku="PEN-1", name="Pen", price="1.20"),
    ])


def start_processes(feed_url: str, port: int) -> Processes:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "shop.settings", "SHOP_VAR": str(VAR),
           "SHOP_INVENTORY_FEED": feed_url, "PYTHONUNBUFFERED": "1"}
    procs = Processes(env)
    for queue, concurrency in QUEUES.items():
        procs.start(f"worker-{queue}", "-m", "conveyor", "-A", "shop", "worker", "-Q", queue,
                    "-c", str(concurrency), "-n", f"{queue}@%h", "-l", "INFO")
    procs.start("beat", "-m", "conveyor", "-A", "shop", "beat", "-l", "INFO", "--scheduler",
                "conveyor.contrib.django.schedulers:DatabaseScheduler")
    procs.start("web", "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload")
    return procs


# --------------------------------------------------------------------------- scenarios


class Report:
    def __init__(self) -> None:
        self.lines: list[tuple[bool, str, str]] = []

    def add(self, ok: bool, what: str, detail: str) -> None:
        self.lines.append((ok, what, detail))
        say(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")

    @property
    def ok(self) -> bool:
        return all(ok for ok, _, _ in self.lines)


def outcome(result: Any, timeout: float) -> Any:
    """The value, or the error as text, within ``timeout`` seconds."""
    try:
        return result.get(timeout=max(1.0, timeout))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def remaining(cap: float) -> float:
    return max(1.0, min(cap, STARTED + BUDGET - time.monotonic()))


def welcome_emails(report: Report) -> list[int]:
    """Customers signing up in one transaction; the mails are sent when it commits."""
    from django.db import transaction

    from accounts.models import Customer
    from accounts.tasks import send_welcome_email

    with transaction.atomic():
        people = [Customer.objects.create(name=n, email=f"{n.lower()}@example.com")
                  for n in ("Asha", "Bikash", "Chandra")]
        sent = [send_welcome_email.delay_on_commit(c.pk) for c in people]
    first = outcome(sent[0], remaining(20))
    again = outcome(send_welcome_email.delay(people[0].pk), remaining(20))  # a double click
    rest = [outcome(r, remaining(20)) for r in sent[1:]]
    statuses = [r.get("status") if isinstance(r, dict) else r for r in [first, *rest, again]]
    report.add(statuses == ["sent", "sent", "sent", "already_sent"],
               "welcome e-mails (delay_on_commit, idempotent)",
               f"{statuses}; mails in {VAR / 'mail'}")
    return [c.pk for c in people]


def inventory_sync(report: Report) -> None:
    from inventory.tasks import sync_inventory

    value = outcome(sync_inventory.delay(), remaining(25))
    ok = isinstance(value, dict) and value.get("attempts") == FEED_FAILURES + 1
    report.add(ok, "inventory sync (autoretry on network errors, backoff)",
               f"{value} after {FlakyFeed.hits} feed requests")


def single_order(report: Report, customer_id: int) -> None:
    from orders.models import Order, Product
    from orders.tasks import process_order

    order = Order.objects.create(customer_id=customer_id, gateway_failures=2,
                                 product=Product.objects.get(sku="TEA-1"))
    value = outcome(process_order.delay(order.pk), remaining(25))
    ok = isinstance(value, dict) and value.get("retries") == 2
    report.add(ok, "payment (bound task, self.retry with exponential backoff)", str(value))


def bulk_pipeline(report: Report, customers: list[int]) -> None:
    from orders.models import Order, Product
    from orders.pipeline import process_bulk_order

    products = {p.sku: p for p in Product.objects.all()}
    wanted = [("TEA-1", 2), ("MUG-1", 1), ("PEN-1", 5), ("MUG-1", 10)]  # the last two: no stock
    ids = [Order.objects.create(customer_id=customers[i % len(customers)],
                                product=products[sku], quantity=qty).pk
           for i, (sku, qty) in enumerate(wanted)]
    value = outcome(process_bulk_order(ids), remaining(30))
    ok = value == ["confirmed", "confirmed", "invalid", "invalid"]
    report.add(ok, "bulk order pipeline (chord -> batch charge -> group)",
               f"orders {ids}: {value}")


def sales_report(report: Report) -> None:
    from reports.tasks import generate_sales_report

    value = outcome(generate_sales_report.delay("demo"), remaining(20))
    report.add(isinstance(value, dict) and value.get("orders", 0) >= 3,
               "sales report (routed to the reports queue)", str(value))


def django_task(report: Report) -> None:
    from newsletter.jobs import preview_digest

    result = preview_digest.enqueue("asha@example.com")

    def done() -> bool:
        result.refresh()
        return bool(result.is_finished)

    wait_for(done, remaining(20))
    value = result.return_value if result.status == "SUCCESSFUL" else result.status
    report.add(value == "Dear Asha, here is what is new today.",
               "django.tasks @task on a Conveyor worker", f"{result.status}: {value!r}")


def periodic(report: Report) -> None:
    from conveyor.contrib.django.models import IntervalSchedule, PeriodicTask

    every = IntervalSchedule.objects.create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="queue-snapshot", task="reports.tasks.snapshot_queues",
                                interval=every, description="Added while beat was running.")

    def ran() -> int:
        return PeriodicTask.objects.get(name="queue-snapshot").total_run_count >= 2

    wait_for(ran, remaining(20))
    row = PeriodicTask.objects.get(name="queue-snapshot")
    from reports.models import QueueSnapshot

    snapshots = wait_for(lambda: QueueSnapshot.objects.count(), remaining(5)) or 0
    report.add(row.total_run_count >= 2 and snapshots >= 1,
               "database schedule added while beat runs (every 2 s)",
               f"sent {row.total_run_count} times, {snapshots} snapshots written")
    names = sorted(PeriodicTask.objects.filter(from_settings=True).values_list("name",
                                                                                flat=True))
    report.add(len(names) == 3 and PeriodicTask.objects.filter(
        name="nightly-sales-report").exists(),
        "static schedules (settings) in the database beside the admin's", ", ".join(names))


def admin_page(report: Report, url: str) -> None:
    def up() -> int:
        try:
            with urllib.request.urlopen(f"{url}login/", timeout=2) as response:
                return int(response.status)
        except OSError:
            return 0

    status = wait_for(up, remaining(15))
    report.add(status == 200, "admin (runserver)", f"{url} answered {status}")


# --------------------------------------------------------------------------- main


def where_to_look(admin_url: str, database_url: str | None) -> None:
    from conveyor._redact import url as redacted
    from conveyor.contrib.django.models import TaskResult

    shop = SHOP.relative_to(Path.cwd()) if SHOP.is_relative_to(Path.cwd()) else SHOP
    results = TaskResult.objects.count()
    database = redacted(database_url) if database_url else VAR / "shop.sqlite3"
    broker = (f"schema conveyor of {redacted(database_url)}" if database_url
              else VAR / "broker.db")
    # the shell commands below need to be told where the database is
    env = f"SHOP_DATABASE_URL={redacted(database_url)} " if database_url else ""
    print(f"""
Where to look
  Database (orders, {results} task results, schedules): {database}
  Broker (queues, delayed and dead messages):  {broker}
  Logs of the workers, beat and runserver:     {LOGS}/
  Sent e-mails:                                {VAR / 'mail'}/
  The admin ran at {admin_url} (admin / admin). To browse it again:
      cd {shop} && {env}../../.venv/bin/python manage.py runserver
  then open Conveyor > Task results and Conveyor > Periodic tasks.
  A long task with a progress bar: /reports/rebuild/ on the same server
      (with a reports worker running: see docs/django.md, "Progress bars").
  Queues from the command line:
      cd {shop} && {env}../../.venv/bin/python manage.py conveyor queues
  The monitor (task history, workers, queues), with an account from the environment:
      cd {shop} && {env}CONVEYOR_MONITOR_BASIC_AUTH=admin:admin \\
          ../../.venv/bin/conveyor -A shop monitor --port 5555
  then open http://127.0.0.1:5555/ (admin / admin).
""", flush=True)


def run_scenarios(report: Report, admin_url: str) -> None:
    customers = welcome_emails(report)
    inventory_sync(report)  # stock must be known before the pipeline validates orders
    single_order(report, customers[0])
    bulk_pipeline(report, customers)
    sales_report(report)
    django_task(report)
    periodic(report)
    admin_page(report, admin_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The example shop, end to end.")
    parser.add_argument("--postgres", nargs="?", const=DEFAULT_PG, default=None, metavar="URL",
                        help=f"run on PostgreSQL (default {DEFAULT_PG}) instead of SQLite")
    database_url = parser.parse_args(argv).postgres
    feed, feed_url = start_feed()
    port = free_port()
    admin_url = f"http://127.0.0.1:{port}/admin/"
    if database_url:
        from conveyor._redact import url as redacted

        say(f"setting up a fresh PostgreSQL database, {redacted(database_url)}")
    else:
        say(f"setting up a fresh SQLite database in {VAR}")
    setup(feed_url, database_url)
    procs = start_processes(feed_url, port)
    say(f"started workers for {', '.join(QUEUES)}, beat and runserver (logs in {LOGS})")
    report = Report()
    try:
        run_scenarios(report, admin_url)
        for name in procs.dead():
            report.add(False, f"process {name}", f"exited early; see {LOGS / name}.log")
    except Exception as exc:  # show what happened, then clean up
        report.add(False, "demo", f"{type(exc).__name__}: {exc}")
    finally:
        say("stopping workers, beat and runserver")
        procs.stop()
        feed.shutdown()
    where_to_look(admin_url, database_url)
    passed = sum(ok for ok, _, _ in report.lines)
    say(f"{passed}/{len(report.lines)} checks passed")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
