"""The app worker processes load in the hostile-message tests.

``echo`` returns what it was given (so odd values reach the result store) and
``ping`` appends a line to the ledger named by ``LEDGER`` (so a test counts
the good messages that ran).  With ``HOSTILE_BREAK_SUPERVISOR`` set, the thread
pool's supervisor raises on its tenth round: the uncontainable internal crash
that must make the worker exit non-zero.  With ``HOSTILE_KILL_ONCE`` set to a
file path, the first consumer to meet a message whose id starts with
``die-`` raises SystemExit (once: the file records it).
"""

from __future__ import annotations

import os
from typing import Any

from conveyor import Conveyor

app = Conveyor("hostile_app")


@app.task
def echo(*args: Any, **kwargs: Any) -> Any:
    return [list(args), kwargs]


@app.task
def ping(tag: str) -> int:
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag}\n".encode())  # one O_APPEND write: lines never interleave
    finally:
        os.close(fd)
    return os.getpid()


@app.task
def give_back(value: str) -> Any:
    """Returns a value the result store cannot hold for the names below."""
    if value == "deep":
        deep: list[Any] = []
        for _ in range(3000):
            deep = [deep]
        return deep
    return {"surrogate": "\ud800", "nan": float("nan"), "inf": float("inf")}[value]


if os.environ.get("HOSTILE_BREAK_SUPERVISOR"):
    from conveyor.worker.threads import ThreadPool

    _periodic = ThreadPool._periodic
    _rounds = [0]

    def _broken(self: ThreadPool) -> None:
        _rounds[0] += 1
        if _rounds[0] == 10:
            raise RuntimeError("supervisor broken on purpose")
        _periodic(self)

    ThreadPool._periodic = _broken  # type: ignore[method-assign]


if os.environ.get("HOSTILE_KILL_ONCE"):
    from conveyor.worker.consumer import Consumer

    _execute = Consumer._execute

    def _dies_once(self: Consumer, delivery: Any, revoked: bool, *rest: Any) -> Any:
        marker = os.environ["HOSTILE_KILL_ONCE"]
        if delivery.id.startswith("die-") and not os.path.exists(marker):
            open(marker, "w").close()
            raise SystemExit(7)  # not contained: the consumer loop ends
        return _execute(self, delivery, revoked, *rest)

    Consumer._execute = _dies_once  # type: ignore[method-assign]
