"""The autoscaler's rule (conveyor/worker/autoscale.py), as Celery's
celery/worker/autoscale.py has it: grow at once to the work at hand capped at
MAX; shrink toward it, never below MIN, only ``keepalive`` seconds after the
last growth.  Real workers growing and shrinking: tests/integration/test_autoscale.py."""

from __future__ import annotations

import pytest

from conveyor.exceptions import ConfigurationError
from conveyor.worker.autoscale import Autoscaler, parse_autoscale


@pytest.mark.parametrize(("text", "bounds"), [("10,3", (10, 3)), ("3,10", (10, 3)),
                                               ("10", (10, 1)), (" 4 , 0 ", (4, 1))])
def test_parse_reads_celerys_forms(text: str, bounds: tuple[int, int]) -> None:
    assert parse_autoscale(text) == bounds


@pytest.mark.parametrize("text", ["", "a,b", "1,2,3", "-1,2", "0"])
def test_parse_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--autoscale"):
        parse_autoscale(text)


def test_grows_at_once_capped_at_max() -> None:
    scaler = Autoscaler(10, 3, keepalive=30)
    assert scaler.want(size=3, busy=3, waiting=4, now=0) == 7
    assert scaler.want(size=7, busy=7, waiting=100, now=1) == 10


def test_shrinks_only_after_keepalive_and_never_below_min() -> None:
    scaler = Autoscaler(10, 3, keepalive=30)
    assert scaler.want(size=3, busy=3, waiting=7, now=0) == 10
    assert scaler.want(size=10, busy=1, waiting=0, now=29) == 10  # too soon
    assert scaler.want(size=10, busy=5, waiting=0, now=30) == 5
    assert scaler.want(size=5, busy=0, waiting=0, now=61) == 3


def test_new_bounds_apply_at_the_next_check() -> None:
    scaler = Autoscaler(10, 3, keepalive=30)
    scaler.update(4, 2)
    assert scaler.want(size=6, busy=6, waiting=9, now=0) == 4
    scaler.update(8, 6)
    assert scaler.want(size=4, busy=0, waiting=0, now=1) == 6
