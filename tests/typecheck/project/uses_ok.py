"""Correct uses: mypy and pyright must report nothing here.

``assert_type`` lines fail the check if a type does not flow as documented.
"""

from __future__ import annotations

from typing import Any, assert_type

from tasks import (
    add,
    audit,
    charge,
    fetch,
    mul,
    notify,
    ping_task,
    process_order,
    refund,
    tsum,
)

from conveyor import AsyncResult, Signature, Task, chain, chord, group
from conveyor.result import GroupResult

# Calls, checked against the functions.
assert_type(add(1, 2), int)
assert_type(add.delay(1, 2), AsyncResult[int])
assert_type(add.delay(1, y=2).get(timeout=10), int)
assert_type(add.delay_on_commit(1, 2), AsyncResult[int])
assert_type(process_order.delay(7, express=True).get(), str)
assert_type(charge.delay("ada", 500).get(), bool)  # bind=True: the task is not an argument
assert_type(charge("ada", cents=5), bool)
assert_type(notify.delay("ada"), AsyncResult[None])
assert_type(mul.delay(2, 3).get(), int)  # base= classes keep the signature

# async def: the worker awaits the body; calling it directly gives the coroutine.
assert_type(fetch.delay("https://example.com").get(), bytes)
coroutine = fetch("https://example.com")
coroutine.close()

# apply_async takes Celery's tuple form: not checked, the result type still flows.
assert_type(add.apply_async((1, 2), countdown=5), AsyncResult[int])
assert_type(add.apply_async(args=(1,), kwargs={"y": 2}).get(), int)
assert_type(add.apply((1, 2)).get(), int)
assert_type(add.AsyncResult("some-id").get(), int)

# get(propagate=False) may hand back the task's exception instead of raising it.
outcome = add.delay(1, 2).get(propagate=False)
assert_type(outcome, int | BaseException)

# Signatures: every argument, or (the chain idiom) every argument but the first.
assert_type(add.s(1, 2), Signature[int])
assert_type(add.s(2), Signature[int])
assert_type(add.si(1, 2).delay().get(), int)
assert_type(tsum.s(), Signature[int])
assert_type(process_order.s(express=True), Signature[str])
workflow = chain(add.s(1, 2), add.s(3), mul.s(4), process_order.s(express=True))
fanned = chord([add.s(i, i) for i in range(3)], tsum.s())
parallel = group(add.s(i, 1) for i in range(3))
assert_type(parallel.delay(), GroupResult)
partial = add.s(2)
assert_type(partial.delay(4).get(), int)
loose = add.signature((2,), {}, countdown=1)  # Celery's explicit form: not checked
template = add.signature((), {})  # completed later with two arguments: not checked
assert_type(add.s(1, 2).apply_async(countdown=5).get(), int)  # checked arguments, options

assert_type(add.s(2).set(countdown=5), Signature[int])
piped = add.s(1, 2) | mul.s(3) | tsum.s()
assert_type(add.apply_async((1, 2), link=mul.s(10), link_error=notify.si("ops")), AsyncResult[int])
mapped = add.map([(1, 2), (3, 4)])
split = add.chunks([(1, 2), (3, 4)], 1)
assert_type(ping_task.delay("db").get(), str)

# Class-based tasks: checked when the base says Task[[params], result], else not at all.
assert_type(refund.delay(42).get(), str)
audit.delay("anything", at="all")


def run_any(task: Task, *args: Any) -> AsyncResult:
    return task.delay(*args)


run_any(add, 1, 2)
