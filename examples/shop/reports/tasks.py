"""Report tasks: routed to the ``reports`` queue, which has its own worker."""

import time
from decimal import Decimal

from conveyor import shared_task
from conveyor.contrib.django.progress import ProgressRecorder
from orders.models import Order
from reports.models import QueueSnapshot, Report


@shared_task(soft_time_limit=30, time_limit=60)
def generate_sales_report(name: str = "sales") -> dict:
    orders = Order.objects.select_related("product").exclude(status__in=["new", "invalid"])
    revenue = sum((o.total for o in orders), Decimal("0"))
    report = Report.objects.create(name=name, orders=len(orders), revenue=revenue)
    return {"report_id": report.pk, "orders": report.orders, "revenue": str(revenue)}


@shared_task(bind=True)
def snapshot_queues(self) -> dict:
    """Queue depths, every few seconds (a schedule added in the database, not in settings)."""
    depths = {s.queue: s.ready for s in self.app.broker.stats()}
    QueueSnapshot.objects.create(depths=depths)
    return depths


@shared_task(bind=True)
def rebuild_catalogue(self, steps: int = 20, pause: float = 0.15,
                      fail_at: int | None = None) -> dict:
    """A long job with a progress bar (the "Rebuild the catalogue" page).

    ``pause`` stands for the work of one step; ``fail_at`` makes the demo's
    failing run break part-way, to show the bar's failure state.
    """
    recorder = ProgressRecorder(self)
    recorder.set_progress(0, steps, "starting")
    for step in range(1, steps + 1):
        time.sleep(pause)
        if step == fail_at:
            raise RuntimeError(f"supplier feed broke at item {step}")
        recorder.set_progress(step, steps, f"item {step} of {steps}")
    return {"items": steps}
