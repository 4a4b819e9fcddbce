"""The app real worker processes load in the signal and logging tests.

Receivers connected at import write ``signal pid detail`` lines to the file
named by ``SIGNAL_LOG`` (one ``write`` with ``O_APPEND``, so lines from
several processes never interleave).  ``CUSTOM_LOGGING=1`` connects a
``setup_logging`` receiver; ``OWN_ROOT_HANDLER=1`` installs a root handler
before the worker starts, as a project's own logging config would.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from conveyor import Conveyor, signals
from conveyor.log import get_task_logger

app = Conveyor("signals_app")
logger = get_task_logger(__name__)


def write(name: str, detail: object = "") -> None:
    line = f"{name} {os.getpid()} {detail}\n"
    fd = os.open(os.environ["SIGNAL_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task
def ok(x: int) -> int:
    logger.info("task says %s", x)
    print(f"printed from task {x}")
    sys.stdout.flush()
    return x


@app.task
def sleepy(seconds: float) -> None:
    write("sleepy_started", sleepy.request.id)
    time.sleep(seconds)


@app.task
def fail() -> None:
    raise ValueError("fails on purpose")


def _task_receiver(name: str) -> Any:
    def receiver(sender: Any = None, **kw: Any) -> None:
        task = getattr(sender, "name", None) or kw["request"].task  # received: the executor
        task_id = (kw.get("task_id") or getattr(kw.get("request"), "id", "")
                   or sender.request.id)  # task_success: Celery's receivers read it there
        extra = kw.get("state") or kw.get("exception") or kw.get("signum") or ""
        write(name, f"{task} {task_id} {extra!r}")
    return receiver


_KEEP = []
for _name in ("task_prerun", "task_postrun", "task_success", "task_failure",
              "task_received", "task_revoked"):
    _KEEP.append(_task_receiver(_name))
    getattr(signals, _name).connect(_KEEP[-1])


def _plain_receiver(name: str) -> Any:
    def receiver(sender: Any = None, **kw: Any) -> None:
        detail = " ".join(f"{k}={kw[k]}" for k in ("sig", "how", "exitcode", "loglevel",
                                                   "format") if k in kw)
        write(name, f"{type(sender).__name__} {detail}")
    return receiver


for _name in ("celeryd_init", "worker_init", "worker_ready", "worker_process_init",
              "worker_process_shutdown", "worker_shutting_down", "worker_shutdown",
              "beat_init", "beat_embedded_init", "import_modules", "after_setup_logger",
              "after_setup_task_logger", "worker_before_create_process", "heartbeat_sent"):
    _KEEP.append(_plain_receiver(_name))
    getattr(signals, _name).connect(_KEEP[-1])


if os.environ.get("CUSTOM_LOGGING"):
    @signals.setup_logging.connect
    def own_logging(loglevel: int, **kw: Any) -> None:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("CUSTOM %(levelname)s %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(loglevel)
        write("setup_logging", f"loglevel={loglevel}")

if os.environ.get("OWN_ROOT_HANDLER"):
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("OWNROOT %(levelname)s %(message)s"))
    logging.getLogger().addHandler(_handler)
