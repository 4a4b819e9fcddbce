"""RabbitMQ over TLS with ``broker_use_ssl``, against a node that listens only
with TLS for these tests and requires a client certificate.

Celery's RabbitMQ TLS setting is an ``amqps://`` URL and ``broker_use_ssl``
with ``keyfile``, ``certfile``, ``ca_certs`` and ``cert_reqs``
(docs/userguide/configuration.rst, ``broker_use_ssl``); the unit side
(keys, refusals) is tests/unit/test_amqp_tls.py.  The node trusts one
self-signed certificate as its CA and serves it as its own, so a client
given that certificate and its key passes both checks.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import BrokerUnavailable

from ..conftest import require_tool
from ..faults.rabbit_node import RabbitNode
from ..tls import self_signed, signed_by_a_ca

QUEUE = "tls"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    require_tool("rabbitmq-server", RabbitNode.available())
    directory = tmp_path_factory.mktemp("rabbit-tls")
    tls = signed_by_a_ca(directory)
    rabbit = RabbitNode(directory, f"conveyor-tls-{os.getpid()}", tls=tls)
    rabbit.start()
    yield rabbit
    rabbit.stop()


def app_for(node: RabbitNode, tmp_path: Path, use_ssl: dict[str, object]) -> Conveyor:
    url = (f"amqps://{node.user}:{node.password}@127.0.0.1:{node.tls_port}//"
           "?queue_type=classic&connect_timeout=10")
    return Conveyor("tls", broker=url, backend=f"sqlite:///{tmp_path / 'results.db'}",
                    broker_use_ssl=use_ssl)


def files(node: RabbitNode) -> tuple[str, str, str]:
    """``(ca, cert, key)`` as strings, as a settings module has them."""
    assert node.tls is not None
    ca, cert, key = node.tls
    return str(ca), str(cert), str(key)


def test_a_client_certificate_and_a_private_ca_carry_tasks_and_remote_control(
        node: RabbitNode, tmp_path: Path) -> None:
    ca, cert, key = files(node)
    app = app_for(node, tmp_path, {"ca_certs": ca, "certfile": cert, "keyfile": key,
                                   "cert_reqs": ssl.CERT_REQUIRED})
    sent = app.send_task("tls.echo", args=[1], queue=QUEUE)
    [delivery] = app.broker.reserve([QUEUE], 1, 30.0, timeout=10)
    assert delivery.id == sent.id
    assert app.broker.ack([delivery]) == [True]
    # The control channel opens its own connection with the same options.
    assert app.control.ping(timeout=0.2) == []


@pytest.mark.parametrize("case", ["no client certificate", "another CA"])
def test_what_the_server_or_the_client_refuses_is_a_clear_error(
        node: RabbitNode, tmp_path: Path, case: str) -> None:
    ca, cert, key = files(node)
    if case == "no client certificate":  # the node requires one (fail_if_no_peer_cert)
        use_ssl: dict[str, object] = {"ca_certs": ca}
    else:  # the client trusts a CA that did not sign the node's certificate
        other, _ = self_signed(tmp_path)
        use_ssl = {"ca_certs": str(other), "certfile": cert, "keyfile": key}
    app = app_for(node, tmp_path, use_ssl)
    with pytest.raises(BrokerUnavailable) as refused:
        app.send_task("tls.echo", args=[1], queue=QUEUE)
    text = str(refused.value)
    assert f"amqps://{node.user}@127.0.0.1:{node.tls_port}" in text
    # Without a client certificate, the node's alert is read, or (when the node's
    # close is read first, on a busy machine) only the early end of the stream.
    reasons = {"no client certificate": ("certificate required",
                                         "client certificate is missing or not trusted"),
               "another CA": ("certificate verify failed",)}[case]
    assert "TLS failed (" in text and "broker_use_ssl" in text, text
    assert any(reason in text for reason in reasons), text
    assert node.password not in text
