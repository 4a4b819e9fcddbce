"""Reaching the broker when a worker starts: Celery's connection-retry settings.

Celery's worker, when the broker cannot be reached at start, retries if
``broker_connection_retry_on_startup`` says so (when that is None,
``broker_connection_retry`` decides), at most
``broker_connection_max_retries`` times (0 or None: forever), and otherwise
shuts down with an error.  :func:`wait_for_broker` does the same before the
pool starts.  Once running, a Conveyor worker always reconnects by itself
with capped, jittered backoff (guarantee 8), so these settings govern the
start only; docs/settings.md says so.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from conveyor.exceptions import BrokerError, BrokerUnavailable

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.worker")
FIRST_DELAY = 0.1
MAX_DELAY = 5.0


def wait_for_broker(app: Conveyor, stopping: Callable[[], bool], address: str,
                    sleep: Callable[[float], object]) -> bool:
    """Return True once the broker answers, False if a stop was asked meanwhile.

    Raises :class:`BrokerUnavailable` when retrying is off or the retries ran out.
    """
    conf = app.conf
    retry = conf.broker_connection_retry_on_startup
    setting = "broker_connection_retry_on_startup"
    if retry is None:
        retry, setting = conf.broker_connection_retry, "broker_connection_retry"
    limit = conf.broker_connection_max_retries or None  # Celery: 0 or None retries forever
    attempt = 0
    while not stopping():
        try:
            app.broker.ping()
            return True
        except BrokerError as exc:
            if not retry:
                raise BrokerUnavailable(f"cannot reach the broker at {address} ({exc}) and "
                                        f"{setting} is False: not retrying") from exc
            if limit is not None and attempt >= limit:
                raise BrokerUnavailable(f"cannot reach the broker at {address} after {limit} "
                                        "retries (broker_connection_max_retries)") from exc
            attempt += 1
            delay = random.uniform(0, min(MAX_DELAY, FIRST_DELAY * 2 ** attempt))
            log.error("cannot reach the broker at %s (%s); trying again in %.2fs (%d/%s)",
                      address, exc, delay, attempt, limit or "forever")
            sleep(delay)
    return False


def warn_if_calls_outlast_leases(app: Conveyor, lease: float) -> bool:
    """Say so when one broker call may block longer than a third of the lease.

    The supervisor renews leases every third of the lease; a renewal stuck on
    a connection that stopped answering lasts up to the socket timeout, and
    must end before the lease does (docs/operations.md, "Redis in production").
    """
    timeout = getattr(app.broker, "socket_timeout", None)
    if timeout is None or timeout <= lease / 3:
        return False
    log.warning("the broker's socket_timeout (%gs) is above a third of broker_lease_timeout "
                "(%gs): a call stuck on a dead connection can outlast the leases it renews; "
                "lower socket_timeout in broker_transport_options", timeout, lease)
    return True
