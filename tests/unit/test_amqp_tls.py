"""``broker_use_ssl`` for a RabbitMQ broker: Celery's keys, checked at start-up.

Celery documents RabbitMQ TLS as an ``amqps://`` URL (or ``broker_use_ssl``)
with a dict of ``keyfile``, ``certfile``, ``ca_certs`` and ``cert_reqs``
(docs/userguide/configuration.rst, ``broker_use_ssl``, "py-amqp
transport"); kombu hands it to py-amqp, whose TLS wrapper also takes
``server_hostname`` and ``ciphers`` (amqp/transport.py ``_wrap_socket_sni``).
That a connection really uses them is checked against a TLS-only RabbitMQ
in tests/integration/test_rabbitmq_tls.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from conveyor import Conveyor, _amqp
from conveyor.exceptions import ConfigurationError
from tests.tls import self_signed

URL = "amqps://u:p@broker.example/v"
BACKEND = "sqlite:///state.db"


def options(use_ssl: object, url: str = URL) -> _amqp.AMQPOptions:
    """What the broker connects with, through the app's settings as a user sets them."""
    app = Conveyor("t", broker=url, backend=BACKEND, broker_use_ssl=use_ssl)
    return _amqp.parse_amqp_url(url, app.conf.broker_options())


@pytest.fixture
def pem(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


def test_amqps_alone_checks_the_server_against_the_system_cas() -> None:
    for use_ssl in (False, True):
        o = options(use_ssl)
        context = _amqp.ssl_context(o)
        assert o.tls and o.port == 5671
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
        assert _amqp.tls_server_name(o) == "broker.example"


def test_celery_s_keys_reach_the_connection_s_context(pem: tuple[Path, Path]) -> None:
    cert, key = pem
    o = options({"ca_certs": str(cert), "certfile": str(cert), "keyfile": str(key),
                 "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "rabbit.internal"})
    context = _amqp.ssl_context(o)
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "127.0.0.1"),),)]
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert _amqp.tls_server_name(o) == "rabbit.internal"


@pytest.mark.parametrize("reqs", [ssl.CERT_NONE, "CERT_NONE", "none"])
def test_cert_none_trusts_any_server(reqs: object) -> None:
    context = _amqp.ssl_context(options({"cert_reqs": reqs}))
    assert context.verify_mode is ssl.CERT_NONE and not context.check_hostname


@pytest.mark.parametrize(("use_ssl", "url", "named"), [
    (True, "amqp://u:p@h/v", "amqps://"),
    ({"ca_certs": "/nowhere/ca.pem"}, URL, "/nowhere/ca.pem"),
    ({"ssl_ca_certs": "x"}, URL, "ssl_ca_certs"),  # Redis's spelling
    ({"cert_reqs": "sometimes"}, URL, "cert_reqs"),
    ({"ssl_version": 2}, URL, "ssl_version"),
    ("yes", URL, "broker_use_ssl must be bool or dict"),
])
def test_what_cannot_be_honoured_is_refused_by_name(use_ssl: object, url: str,
                                                    named: str) -> None:
    with pytest.raises(ConfigurationError, match=named.replace(".", r"\.")):
        options(use_ssl, url)


def test_a_key_without_its_certificate_is_refused(pem: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigurationError, match="keyfile without certfile"):
        options({"keyfile": str(pem[1])})


def test_a_tls_error_never_shows_the_password() -> None:
    with pytest.raises(ConfigurationError) as refused:
        options(True, "amqp://me:s3cret@h/v")
    assert "s3cret" not in str(refused.value)


def test_the_transport_option_ssl_is_the_same_setting() -> None:
    """kombu's ``Connection(ssl=...)`` as ``broker_transport_options['ssl']``: read,
    checked and refused exactly as ``broker_use_ssl``."""
    o = _amqp.parse_amqp_url(URL, {"state_url": BACKEND, "ssl": {"cert_reqs": "none"}})
    assert _amqp.ssl_context(o).verify_mode is ssl.CERT_NONE
    with pytest.raises(ConfigurationError, match="amqps://"):
        _amqp.parse_amqp_url("amqp://u:p@h/v", {"state_url": BACKEND, "ssl": {}})


def test_the_operations_guide_s_example_is_accepted(tmp_path: Path) -> None:
    """docs/operations.md's RabbitMQ TLS block, executed as a settings module would
    be: every key it shows is one this broker takes (its files stood in for)."""
    page = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    block = page.split("TLS with a private CA", 1)[1].split("```python\n", 1)[1]
    shown: dict[str, object] = {}
    exec(block.split("```", 1)[0], shown)
    use_ssl = dict(shown["broker_use_ssl"])  # type: ignore[call-overload]
    for key in ("ca_certs", "certfile", "keyfile"):
        stand_in = tmp_path / key
        stand_in.write_text("")
        use_ssl[key] = str(stand_in)
    checked = _amqp.tls_settings(str(shown["broker_url"]), use_ssl)
    assert set(checked) == set(dict(shown["broker_use_ssl"]))  # type: ignore[call-overload]
    assert checked["cert_reqs"] is ssl.CERT_REQUIRED


@pytest.mark.parametrize(("lost", "reason"), [
    # OpenSSL read the server's alert: its own words.
    ("StreamLostError: (\"Stream connection lost: SSLError(1, '[SSL: TLSV13_ALERT_CERTIFICATE_"
     "REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)')\",)",
     "tlsv13 alert certificate required"),
    # The server closed before the alert was read (seen under load): the early end.
    ("StreamLostError: (\"Stream connection lost: SSLEOFError(8, 'EOF occurred in violation "
     "of protocol (_ssl.c:2427)')\",)",
     "client certificate is missing or not trusted"),
])
def test_a_refusal_after_the_handshake_is_named(lost: str, reason: str) -> None:
    """A TLS 1.3 server that refuses the client's certificate does so after the
    handshake, and pika reports the lost stream as an IncompatibleProtocolError
    (its text is all that is left of the SSL error); either way the error says
    TLS failed and why, never just "unreachable (IncompatibleProtocolError)"."""
    import pika

    from conveyor._amqp_link import _tls_failed, _tls_refusal

    wrapped = pika.exceptions.IncompatibleProtocolError(lost)
    refused = _tls_refusal(pika.exceptions.AMQPConnectionError(wrapped))
    assert refused is not None and reason in refused
    text = _tls_failed(options({"ca_certs": "/etc/ssl/certs/ca-certificates.crt"}), refused)
    assert text.startswith("RabbitMQ at amqps://u@broker.example:5671/v: TLS failed (")
    assert "broker_use_ssl" in text and ":p@" not in text
