"""Queue shards' placement and options (conveyor._redis_shards, ADR 0027)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from conveyor._redis import parse_redis_url
from conveyor._redis_shards import ShardPlan, shard_plan, shard_prefixes
from conveyor.exceptions import ConfigurationError

URL = "redis+cluster://127.0.0.1:7000/0"


@pytest.mark.parametrize("shards", [2, 3, 4, 6])
def test_each_shard_takes_its_own_run_of_slots_and_shard_0_is_home(shards: int) -> None:
    prefixes = shard_prefixes("{app}", shards)
    assert prefixes[0] == "{app}"
    runs = {key_slot(p.encode()) * shards // 16384 for p in prefixes}
    assert runs == set(range(shards))
    assert shard_prefixes("{app}", shards) == prefixes  # every process computes the same


def test_the_map_wins_over_the_hash() -> None:
    plan = ShardPlan(3, {"emails": 2})
    assert plan.shard_of("emails") == 2
    assert plan.shard_of("other") == plan.shard_of("other") in (0, 1, 2)


def test_options_and_url_query() -> None:
    assert shard_plan(URL, {}) is None
    assert shard_plan(f"{URL}?queue_shards=1", {}) is None
    options = {"queue_shards": 3, "queue_shard_map": {"a": 1}, "prefix": "p"}
    plan = shard_plan(URL, options)
    assert plan == ShardPlan(3, {"a": 1}) and options == {"prefix": "p"}
    assert shard_plan(f"{URL}?queue_shards=2", {}) == ShardPlan(2)


@pytest.mark.parametrize("options", [{"queue_shards": 0}, {"queue_shards": "x"},
                                     {"queue_shards": 2, "queue_shard_map": {"a": 2}},
                                     {"queue_shard_map": {"a": 0}}])
def test_bad_plans_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        shard_plan(URL, dict(options))


def test_stores_refuse_it_in_their_options_and_off_a_cluster() -> None:
    assert parse_redis_url(f"{URL}?queue_shards=3").prefix == "{conveyor}"
    with pytest.raises(ConfigurationError, match="only apply to the broker"):
        parse_redis_url(URL, {"queue_shards": 3})
    with pytest.raises(ConfigurationError, match="needs a redis\\+cluster"):
        parse_redis_url("redis://h/0?queue_shards=3")
