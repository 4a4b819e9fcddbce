"""The worker: pools, leases, time limits, shutdown."""

from conveyor.worker.main import Worker

__all__ = ["Worker"]
