"""A self-signed certificate for 127.0.0.1, made with ``openssl`` for a test's servers.

The certificate is its own CA: a client trusts it with ``ssl_ca_certs``
pointing at the same file, and Redis servers use it for their replication
and cluster-bus links too (``tls-replication``, ``tls-cluster``).  Clients are
not asked for certificates (``tls-auth-clients no``): what the tests check is
that the client side's TLS options reach every connection.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import IN_CI


def self_signed(directory: Path) -> tuple[Path, Path]:
    """``(cert, key)`` for 127.0.0.1 in ``directory``; skipped without openssl (failed in CI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if IN_CI:
            pytest.fail("openssl is not installed (CI=true: it is required)")
        pytest.skip("openssl is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    return cert, key


def signed_by_a_ca(directory: Path) -> tuple[Path, Path, Path]:
    """``(ca, cert, key)``: a CA and a certificate for 127.0.0.1 it signed, for
    servers that verify their clients too.  Erlang's TLS (RabbitMQ) refuses a
    self-signed peer certificate even when it trusts it as a CA, so a client
    certificate must come from a CA."""
    (directory / "ca").mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = self_signed(directory / "ca")  # checks for openssl
    cert, key, request = directory / "leaf.pem", directory / "leaf.key", directory / "leaf.csr"
    extensions = directory / "leaf.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    run = functools.partial(subprocess.run, check=True, capture_output=True, timeout=60)
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
         str(request), "-subj", "/CN=127.0.0.1"])
    run(["openssl", "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey",
         str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile",
         str(extensions)])
    return ca_cert, cert, key


@dataclass(frozen=True)
class RedisTls:
    """What a TLS-only Redis server (``--port 0 --tls-port N``) and its clients need."""

    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> RedisTls:
        directory.mkdir(parents=True, exist_ok=True)
        return cls(*self_signed(directory))

    def settings(self) -> dict[str, str]:
        """Server settings, as ``redis.conf`` names them."""
        return {"tls-cert-file": str(self.cert), "tls-key-file": str(self.key),
                "tls-ca-cert-file": str(self.cert), "tls-auth-clients": "no",
                "tls-replication": "yes"}

    def server_args(self, port: int) -> list[str]:
        """``redis-server`` arguments: TLS on ``port``, no plain port."""
        args = ["--port", "0", "--tls-port", str(port)]
        for name, value in self.settings().items():
            args += [f"--{name}", value]
        return args

    def conf(self, port: int) -> str:
        """The same as configuration-file lines (for sentinels)."""
        lines = [f"port 0\ntls-port {port}\n"]
        lines += [f"{name} {value}\n" for name, value in self.settings().items()]
        return "".join(lines)

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py arguments that trust this certificate."""
        return {"ssl": True, "ssl_ca_certs": str(self.cert)}

    def cli_args(self) -> list[str]:
        return ["--tls", "--cacert", str(self.cert)]
