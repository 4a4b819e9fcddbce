"""Wrong uses: each line marked ``# E: <code>`` must be reported there, and nothing else.

The codes are mypy's; pyright reports the same lines (its own rule names).
"""

from __future__ import annotations

from tasks import add, charge, fetch, ping_task, process_order, refund, tsum

process_order.delay(order_id="x")  # E: arg-type
process_order.delay()  # E: call-arg
process_order.delay(7, expres=True)  # E: call-arg
add.delay(1, "2")  # E: arg-type
add(1)  # E: call-arg
charge.delay(500, "ada")  # E: arg-type
charge.delay(charge, "ada", 500)  # E: call-arg arg-type
fetch.delay(b"https://example.com")  # E: arg-type
add.si(1)  # E: call-arg
add.si(1, "2")  # E: arg-type
add.s("1", 2)  # E: call-overload
add.s("2")  # E: call-overload
add.s(1, 2, 3)  # E: call-overload
tsum.s([1], [2])  # E: call-overload
process_order.s(wrong=True)  # E: call-overload
total: str = add.delay(1, 2).get()  # E: assignment
label: int = process_order.si(1).delay().get()  # E: assignment
data: str = fetch.delay("https://example.com").get()  # E: assignment
refund.delay("42")  # E: arg-type
ping_task.delay(host=1)  # E: arg-type
# Known and documented (docs/typing.md): a signature completed later with more than
# its first argument is refused; add.signature((), {}) says the same unchecked.
add.s()  # E: call-overload
