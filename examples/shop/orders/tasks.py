"""Order tasks: a bound task with retries and backoff, and the bulk pipeline's steps.

All of them are routed to the ``orders`` queue by ``CELERY_TASK_ROUTES``.
"""

from decimal import Decimal

from django.core.mail import send_mail
from django.db import transaction

from conveyor import shared_task
from conveyor.log import get_task_logger
from inventory.models import StockItem
from orders import gateway
from orders.models import Order

logger = get_task_logger(__name__)


@shared_task(bind=True, max_retries=4)
def process_order(self, order_id: int) -> dict:
    """Charge one order; a busy gateway is retried after 0.5, 1, 2, 4 seconds."""
    try:
        order = Order.objects.select_related("product").get(pk=order_id)
    except Order.DoesNotExist:
        logger.error("order %s not found, skipping", order_id)  # retrying cannot help
        return {"status": "not_found", "order_id": order_id}
    try:
        ref = gateway.charge(order, self.request.retries)
    except gateway.GatewayUnavailable as exc:
        logger.warning("order %s: %s; retrying", order_id, exc)
        raise self.retry(exc=exc, countdown=0.5 * 2 ** self.request.retries) from exc
    Order.objects.filter(pk=order_id).update(status="processed", payment_ref=ref)
    return {"status": "ok", "order_id": order_id, "retries": self.request.retries}


@shared_task
def validate_order(order_id: int) -> dict:
    """Step 1 of the bulk pipeline (run in parallel): is the item in stock?"""
    order = Order.objects.select_related("product").get(pk=order_id)
    stock = StockItem.objects.filter(sku=order.product.sku).values_list("quantity",
                                                                        flat=True).first()
    valid = stock is not None and stock >= order.quantity
    Order.objects.filter(pk=order_id).update(status="valid" if valid else "invalid")
    return {"order_id": order_id, "valid": valid, "total": str(order.total)}


@shared_task
def collect_validation_results(results: list) -> dict:
    """The chord's body: every validation result, in the order the orders were given."""
    valid = [r["order_id"] for r in results if r["valid"]]
    total = sum((Decimal(r["total"]) for r in results if r["valid"]), Decimal("0"))
    return {"valid": valid, "invalid": [r["order_id"] for r in results if not r["valid"]],
            "amount": str(total)}


@shared_task
def charge_batch_payment(summary: dict) -> dict:
    """Step 2: one charge for every valid order (sequential, after the chord)."""
    with transaction.atomic():
        ref = f"batch_{'_'.join(str(i) for i in summary['valid'])}"
        Order.objects.filter(pk__in=summary["valid"]).update(status="charged", payment_ref=ref)
    return {**summary, "payment_ref": ref}


@shared_task
def send_confirmation(order_id: int) -> str:
    """Step 3 (a group, in parallel): tell each customer what happened."""
    order = Order.objects.select_related("customer").get(pk=order_id)
    if order.status == "charged":
        Order.objects.filter(pk=order_id).update(status="confirmed")
        send_mail("Your order is confirmed", f"Order {order.pk} is on its way.", None,
                  [order.customer.email])
        return "confirmed"
    return order.status
