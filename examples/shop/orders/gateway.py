"""A fake payment gateway that fails on request, so retries have something to do."""

import uuid

from orders.models import Order


class GatewayUnavailable(Exception):
    """A transient failure: worth retrying later."""


def charge(order: Order, attempt: int) -> str:
    if attempt < order.gateway_failures:
        raise GatewayUnavailable(f"gateway busy (attempt {attempt + 1})")
    return f"pay_{uuid.uuid4().hex[:12]}"
