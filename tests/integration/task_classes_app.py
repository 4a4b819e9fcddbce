"""Task classes and their hooks, loaded by real worker processes in tests.

``-A tests.integration.task_classes_app``; settings come from the environment.
Every hook appends one JSON line (hook name, its arguments, the process id,
what ``self.request`` said, and the state the result store held at that
moment) to the file named by ``LEDGER``, so a test can check which hooks ran,
with what, in which order and in which process, on every pool.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from conveyor import Conveyor, shared_task
from conveyor.exceptions import Reject

app = Conveyor("task_classes_app")


def note(hook: str, task: Any, task_id: str, **fields: Any) -> None:
    line = {"hook": hook, "task": task.name, "task_id": task_id, "pid": os.getpid(),
            "request_id": task.request.id, "stored": task.AsyncResult(task_id).state,
            **fields}
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, default=repr) + "\n").encode())
    finally:
        os.close(fd)


def described(exc: BaseException | None) -> str | None:
    return None if exc is None else f"{type(exc).__name__}: {exc}"


class Recorded(app.Task):
    """Records every hook; gives its tasks a helper and an attribute."""

    greeting = "hello"
    max_retries = 4  # a class-level option default

    def greet(self, name: str) -> str:
        return f"{self.greeting} {name}"

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        note("before_start", self, task_id, args=list(args), kwargs=kwargs)
        if kwargs.get("refuse"):
            raise Reject("refused in before_start", requeue=False)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        note("on_success", self, task_id, retval=retval, args=list(args), kwargs=kwargs)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        note("on_failure", self, task_id, exc=described(exc), args=list(args), kwargs=kwargs,
             einfo_type=einfo.type.__name__, einfo_is_exc=einfo.exception is exc,
             einfo_tb=einfo.traceback)

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                 einfo: Any) -> None:
        note("on_retry", self, task_id, exc=described(exc), args=list(args), kwargs=kwargs,
             einfo_type=einfo.type.__name__, retries=self.request.retries)

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any,
                     einfo: Any) -> None:
        note("after_return", self, task_id, status=status,
             retval=described(retval) if isinstance(retval, BaseException) else retval,
             einfo=einfo is not None)


class BrokenHooks(Recorded):
    """on_success and on_failure raise: the outcome must stand."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        super().on_success(retval, task_id, args, kwargs)
        raise RuntimeError("on_success is broken")

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        super().on_failure(exc, task_id, args, kwargs, einfo)
        raise RuntimeError("on_failure is broken")


@app.task(base=Recorded, bind=True)
def add(self: Recorded, x: int, y: int, refuse: bool = False) -> list[Any]:
    return [x + y, self.greet("world"), self.max_retries, self.request.id]


@app.task(base=Recorded)
def boom(message: str) -> None:
    raise ValueError(message)


@app.task(base=Recorded, bind=True, default_retry_delay=0.1)
def again(self: Recorded, times: int) -> int:
    if self.request.retries < times:
        raise self.retry(exc=KeyError("not yet"))
    return self.request.retries


@app.task(base=Recorded, bind=True)
async def async_add(self: Recorded, x: int, y: int) -> list[Any]:
    await asyncio.sleep(0.01)
    return [x + y, self.greet("async")]


@app.task(base=Recorded)
async def async_boom(message: str) -> None:
    await asyncio.sleep(0.01)
    raise ValueError(message)


@app.task(base=BrokenHooks)
def broken_ok() -> str:
    return "kept"


@app.task(base=BrokenHooks)
def broken_fail() -> None:
    raise ValueError("still failed")


@app.task(base=Recorded, time_limit=0.5)
def too_slow() -> None:
    time.sleep(30)


@shared_task(base=Recorded, bind=True)
def shared_add(self: Recorded, x: int) -> str:
    return self.greet(str(x))


class Multiply(Recorded):
    """A class-based task (Celery's older style), registered explicitly."""

    name = "task_classes.multiply"
    factor = 10

    def run(self, x: int) -> int:
        return x * self.factor


multiply = app.register_task(Multiply())
