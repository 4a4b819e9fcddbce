"""``redis+cluster://`` URLs (issue 21): the nodes, the hash-tagged prefix, the slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from conveyor._redis import parse_redis_url
from conveyor._redis_cluster import _read_slots, hash_tagged
from conveyor.exceptions import ConfigurationError


@pytest.mark.parametrize(("prefix", "tagged"), [
    ("conveyor", "{conveyor}"),
    ("{app}", "{app}"),
    ("{app}-x", "{app}-x"),
    ("a{b}c", "a{b}c"),
    ("{}x", "{{}x}"),  # an empty tag is no tag: Redis would hash the whole key
    ("a}b{", "{a}b{}"),
])
def test_the_prefix_becomes_a_hash_tag(prefix: str, tagged: str) -> None:
    assert hash_tagged(prefix) == tagged
    # Every key under the prefix hashes like the prefix: one slot for the app.
    assert key_slot(f"{tagged}:queue:default".encode()) == key_slot(tagged.encode())


def test_nodes_prefix_slot_and_credentials_come_from_the_url() -> None:
    parsed = parse_redis_url("redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2,h3:7002/0"
                             "?prefix=app&socket_timeout=2")
    assert parsed.cluster is not None
    assert parsed.cluster.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("h3", 7002))
    assert parsed.prefix == "{app}"
    assert parsed.cluster.slot == key_slot(b"app")
    assert parsed.client_kwargs["username"] == "u"
    assert parsed.client_kwargs["password"] == "p@ss"
    assert parsed.client_kwargs["socket_timeout"] == 2.0
    assert "slot" in parsed.address and "10.0.0.1:7000" in parsed.address


def test_the_default_prefix_is_tagged_too() -> None:
    assert parse_redis_url("redis+cluster://h:7000").prefix == "{conveyor}"


@pytest.mark.parametrize(("url", "options", "message"), [
    ("redis+cluster://h:7000/3", {}, "only database 0"),
    ("redis+cluster://h:7000,:7001", {}, "host:port"),
    ("redis+cluster://h:x", {}, "bad port"),
    ("redis+cluster://h:7000", {"master_name": "m"}, "sentinel://"),
])
def test_bad_cluster_urls_are_refused(url: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_redis_url(url, options)


def test_the_slot_owner_is_read_from_cluster_slots() -> None:
    reply = [
        [0, 5460, [b"127.0.0.1", 7100, b"id1"], [b"127.0.0.1", 7104, b"id5"]],
        [5461, 10922, [b"", 7101, b"id2"], [b"127.0.0.1", 7105, b"id6"]],
    ]
    owner, nodes = _read_slots(reply, 6000, "10.1.1.1")
    assert owner == ("10.1.1.1", 7101)  # announced without an address: the one asked
    assert ("127.0.0.1", 7104) in nodes and len(nodes) == 4
    assert _read_slots(reply, 16000, "h")[0] is None


def test_the_password_of_a_node_list_is_redacted() -> None:
    from conveyor import _redact

    url = "redis+cluster://user:s3cret@h1:7000,h2:7001/0?prefix=x"
    assert _redact.url(url) == "redis+cluster://user:********@h1:7000,h2:7001/0?prefix=x"
    assert "s3cret" not in _redact.text(f"broker at {url} is down")
    assert "s3cret" not in parse_redis_url(url).address


def test_tls_reaches_the_pinned_connections_and_the_slot_question() -> None:
    """With ``ssl``, both the connection to the owner and the ``CLUSTER SLOTS``
    question go over TLS with the same certificates."""
    from conveyor._redis import new_client
    from conveyor._redis_cluster import SlotConnection, SlotSSLConnection

    tls = parse_redis_url("redis+cluster://h:7000?ssl=true&ssl_ca_certs=/ca.pem")
    client = new_client(tls.client_kwargs, cluster=tls.cluster)
    pool = client.connection_pool
    assert pool.connection_class is SlotSSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    asked = pool.connection_kwargs["slot_owner"]._kwargs
    assert asked["ssl"] is True and asked["ssl_ca_certs"] == "/ca.pem"
    assert asked["ssl_cert_reqs"] == "required"
    plain = parse_redis_url("redis+cluster://h:7000")
    pool = new_client(plain.client_kwargs, cluster=plain.cluster).connection_pool
    assert pool.connection_class is SlotConnection
    assert "ssl" not in pool.connection_kwargs["slot_owner"]._kwargs
