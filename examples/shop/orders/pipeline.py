"""The bulk order pipeline: validate in parallel, then charge once, then confirm in parallel."""

from conveyor import chain, chord, group
from orders.tasks import (
    charge_batch_payment,
    collect_validation_results,
    send_confirmation,
    validate_order,
)


def process_bulk_order(order_ids: list[int]):
    """Returns the result of the last step (a group result with one value per order).

    The confirmations use ``.si()``: a group at the end of a chain would
    otherwise receive the payment summary as each call's first argument.
    """
    return chain(
        chord(group(validate_order.s(oid) for oid in order_ids),
              collect_validation_results.s()),
        charge_batch_payment.s(),
        group(send_confirmation.si(oid) for oid in order_ids),
    ).delay()
