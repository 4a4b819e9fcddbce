"""The app the browser tests run (``-A tests.browser.monitor_app``) in a worker,
a beat and a monitor process.

The broker URL comes from ``MONITOR_TEST_BROKER``; ``MONITOR_TEST_DIR`` is a
scratch folder for cross-process markers.  Task names are short and fixed so
the screenshots read well.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from conveyor import Conveyor
from conveyor.exceptions import Reject

app = Conveyor("shop", broker=os.environ.get("MONITOR_TEST_BROKER", "memory://"))
app.conf.update({
    "worker_heartbeat_interval": 0.5,
    "worker_prefetch_multiplier": 1,  # a long task must not sit on messages others could run
    "beat_schedule": {
        "refresh-exchange-rates": {"task": "shop.rates", "schedule": 5.0},
        "nightly-report": {"task": "shop.report", "schedule": 86400.0, "args": ["daily"]},
    },
})


def _scratch() -> Path:
    return Path(os.environ.get("MONITOR_TEST_DIR", "/tmp"))


@app.task(name="shop.add")
def add(a: int, b: int) -> int:
    time.sleep(0.02 * (a % 5))
    return a + b


@app.task(name="shop.charge_card")
def charge_card(order: int, amount: float) -> dict[str, Any]:
    if order % 7 == 0:
        raise ValueError(f"card declined for order {order}")
    time.sleep(0.05)
    return {"order": order, "charged": amount}


@app.task(name="shop.send_receipt", bind=True, max_retries=2, default_retry_delay=0.2)
def send_receipt(self: Any, order: int) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("mail server busy"))
    return f"receipt for {order} sent"


@app.task(name="shop.import_catalog", bind=True)
def import_catalog(self: Any, items: int, pause: float = 0.25) -> int:
    """Reports progress as it goes (the Tasks page draws a bar)."""
    for done in range(items):
        self.update_state(state="PROGRESS", meta={"current": done, "total": items})
        time.sleep(pause)
    return items


@app.task(name="shop.sync_inventory")
def sync_inventory(warehouse: str) -> str:
    """Dead-letters itself the first time (as a bad deploy would), succeeds when replayed."""
    marker = _scratch() / f"inventory-{warehouse}"
    if not marker.exists():
        marker.write_text("seen")
        raise Reject(f"warehouse {warehouse} API returned 410 Gone")
    return f"{warehouse} synced"


@app.task(name="shop.rebuild_index")
def rebuild_index(seconds: float) -> str:
    time.sleep(seconds)
    return "rebuilt"


@app.task(name="shop.rates")
def rates() -> str:
    return "ok"


@app.task(name="shop.report")
def report(kind: str) -> str:
    return kind
