"""A small typed project: tasks declared the ways real projects declare them."""

from __future__ import annotations

from typing import Any

from conveyor import Conveyor, Task, shared_task

app = Conveyor("shop", broker="memory://", backend="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(max_retries=3, queue="orders")
def process_order(order_id: int, *, express: bool = False) -> str:
    return f"{order_id}:{express}"


@app.task(bind=True, max_retries=5)
def charge(self: Task, customer: str, cents: int) -> bool:
    return bool(self.request.id) and cents > 0


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


@shared_task
def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@shared_task(bind=True)
def notify(self: Task, user: str, text: str = "") -> None:
    self.update_state(state="PROGRESS", meta={"user": user, "text": text})


class LoggedTask(Task):
    """Celery's usual base class: ``__call__`` wraps every task's body."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs)


@app.task(base=LoggedTask)
def mul(x: int, y: int) -> int:
    return x * y


class Refund(Task[[int], str]):
    """A class-based task declares its parameters and result in its base to be checked."""

    name = "shop.refund"

    def run(self, order_id: int) -> str:
        return str(order_id)


class Audit(Task):
    """A class-based task with a bare base: calls through it are not checked."""

    name = "shop.audit"

    def run(self, *events: str) -> int:
        return len(events)


refund = app.register_task(Refund())
audit = app.register_task(Audit)


def ping(host: str) -> str:
    return host


ping_task = app.task(ping, name="shop.ping")  # the decorator called directly, with options
