"""Optional message signing: an HMAC over each body, checked before decoding.

Whoever can write to the broker can put any message on a queue.  With JSON
only (the default) such a message can call registered tasks with arguments
of its choosing; with pickle accepted it runs any code in the worker.  A
shared key closes that door: senders append an HMAC-SHA256 of the body, and
a worker with a key dead-letters every body whose signature is missing or
wrong *before* it decodes a byte of it (so a pickle payload never reaches
``pickle.loads``).

Wire form: the body stays one JSON object; the signature is its last member,
``...,"sig":"<64 hex digits>"}``, computed over the body as it was without
that member.  Stripping a fixed-shape tail gives back the exact signed
bytes, so nothing needs re-serializing or canonical JSON.  A signed body is
still readable by tools that do not verify (the monitor, ``dead-letters
list``): unknown members are ignored.

The key comes from ``message_signing_key`` (e.g. ``CONVEYOR_MESSAGE_SIGNING_KEY``
in the environment) or ``message_signing_key_file`` (a file only the service
user can read).  Celery's ``auth`` serializer signs with X.509 keys and
certificates (``security_key``/``security_certificate``); those settings
load with no effect here (``conveyor/_no_effect.py``), because a shared HMAC
key gives the same protection against broker writers with one secret
instead of a PKI.

Not covered: a broker writer can replay a message it has seen (same task,
same arguments); tasks that must not run twice use ``idempotency_key``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor._serialization import PICKLE
from conveyor.exceptions import ConfigurationError, SerializationError

if TYPE_CHECKING:
    from conveyor._config import Settings

__all__ = ["SignatureError", "key_for", "pickle_warning", "sign", "verify"]

_TAIL = re.compile(rb',"sig":"([0-9a-f]{64})"\}\s*\Z')
MIN_KEY_BYTES = 16


class SignatureError(SerializationError):
    """A body without a valid signature, on a worker that requires one."""


def key_for(conf: Settings) -> bytes | None:
    """The signing key the settings name, or None when signing is off."""
    return _load(conf.message_signing_key, conf.message_signing_key_file)


@functools.lru_cache(maxsize=8)
def _load(inline: str | None, path: str | None) -> bytes | None:
    if inline and path:
        raise ConfigurationError("set message_signing_key or message_signing_key_file, not both")
    if path:
        try:
            inline = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"message_signing_key_file {path}: cannot read it ({exc.strerror})") from exc
    if not inline:
        return None
    key = inline.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"the message signing key is {len(key)} bytes; use at least {MIN_KEY_BYTES} "
            "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    return key


def pickle_warning(conf: Settings) -> str | None:
    """The one startup warning for worker and beat when pickle is accepted, else None."""
    allowing = [name for name, value in (("accept_content", conf.accept_content),
                                         ("result_accept_content", conf.result_accept_content))
                if any(item in ("pickle", PICKLE) for item in value or ())]
    if not allowing:
        return None
    who = ("anyone who can write to the broker or the result store" if len(allowing) > 1 else
           "anyone who can write to the broker" if allowing[0] == "accept_content" else
           "anyone who can write to the result store")
    guard = ("unsigned messages are refused (message_signing_key is set), but results are not "
             "signed" if key_for(conf) else "set message_signing_key so unsigned messages are "
             "refused, or accept json only")
    return (f"{' and '.join(allowing)} allow pickle: {who} can run any code in this process "
            f"and in every process reading its results; {guard} (docs/security.md)")


def _mac(body: bytes, key: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode("ascii")


def sign(body: bytes, key: bytes) -> bytes:
    """``body`` (one JSON object) with its signature as the last member."""
    if not body.endswith(b"}"):
        raise SerializationError("only a JSON object body can be signed")
    return body[:-1] + b',"sig":"' + _mac(body, key) + b'"}'


def verify(body: bytes, key: bytes) -> bytes:
    """The signed body without its signature; :class:`SignatureError` says what is wrong."""
    found = _TAIL.search(body)
    if found is None:
        raise SignatureError("message is not signed (message_signing_key is set here)")
    original = body[:found.start()] + b"}"
    if not hmac.compare_digest(found.group(1), _mac(original, key)):
        raise SignatureError("message signature does not match (wrong key, or the body "
                             "was changed)")
    return original
