"""Report tasks: routed to the ``reports`` queue, which has its own worker."""

from decimal import Decimal

from conveyor import shared_task
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
