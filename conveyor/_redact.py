"""One rule for hiding secrets in URLs, options and free text.

Every error, log line, report, health check and API answer that can carry a
broker or store URL, or an options dict, passes through here, so a password
never leaves the process that was given it.  The rule:

* a URL's userinfo password becomes ``********`` (the user name stays: it helps
  tell two servers apart and is not a secret);
* a query parameter whose *name* looks secret (see :func:`is_secret_key`)
  keeps its name and loses its value: ``?password=********``;
* in an options mapping (``broker_transport_options``, ...) the value under a
  secret-looking key becomes ``********``, at any depth, and string values that
  are URLs are redacted as URLs;
* free text (an exception message, a log line) has every ``scheme://...``
  token redacted as a URL and every ``name=value`` pair with a secret name
  masked.

:class:`conveyor.exceptions.ConveyorError` applies :func:`text` to its
arguments and the CLI's log formatter to each formatted line, so new call
sites are safe without remembering to call anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

__all__ = ["MASK", "is_secret_key", "options", "text", "url", "value"]

MASK = "********"

#: Name parts that mark a secret wherever they appear in a key.
_SECRET_PARTS = frozenset({
    "password", "passwd", "pass", "pwd", "secret", "token", "auth", "credential",
    "credentials", "apikey", "signature", "passphrase", "sasl",
})
#: ``..._key`` names (``api_key``, ``signing_key``, ``access_key``) are secrets;
#: ``key_prefix`` and ``keyfile`` (a path) are not.
_KEY_SUFFIX = "key"

_URL_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
_PAIR = re.compile(r"(?<![A-Za-z0-9_.-])(?P<name>[A-Za-z][A-Za-z0-9_.-]*)"
                   r"(?P<sep>['\"]?\s*[=:]\s*[\[(]?['\"]?)"
                   r"(?P<value>[^\s'\",&;)}\]]+)")


def is_secret_key(name: object, *, key_suffix: bool = True) -> bool:
    """True for option or query names that hold a secret (``password``, ``sentinel_password``,
    ``token``, ``secret``, ``auth``, ``api_key``, ``security_key``, ...).

    In free text ``key_suffix=False``: ``NAME_KEY=...`` in a sentence is more
    often a variable's name than a secret's."""
    if not isinstance(name, str):
        return False
    parts = [p for p in re.split(r"[^a-z0-9]+", name.lower()) if p]
    if not parts:
        return False
    if any(p in _SECRET_PARTS for p in parts):
        return True
    return key_suffix and len(parts) > 1 and parts[-1] == _KEY_SUFFIX


def url(address: str) -> str:
    """``address`` with its password and secret query values replaced by :data:`MASK`.

    Celery's ``sentinel://a;sentinel://b`` lists are redacted one URL at a time.
    """
    if ";" in address and address.count("://") > 1:
        return ";".join(url(piece) for piece in address.split(";"))
    try:
        parts = urlsplit(address)
    except ValueError:  # an unparseable "URL": keep the scheme, hide the rest
        scheme = address.partition("://")[0]
        return f"{scheme}://{MASK}"
    return _rebuild(parts)


def _rebuild(parts: SplitResult) -> str:
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    query = "&".join(_query_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}"
    if query or parts.query:
        rebuilt += f"?{query}"
    if parts.fragment:
        rebuilt += f"#{parts.fragment}"
    return rebuilt


def _query_pair(pair: str) -> str:
    name, eq, _ = pair.partition("=")
    return f"{name}={MASK}" if eq and is_secret_key(name) else pair


def options(found: Any) -> Any:
    """A copy of a settings value with secrets masked, at any depth.

    Under a secret-looking key a value is masked unless it is a mapping, which
    is searched instead: ``beat_schedule = {"refresh-auth-token": {...}}`` is
    an entry's name, not a secret.
    """
    if isinstance(found, Mapping):
        return {k: _under(k, found[k]) for k in found}
    if isinstance(found, (list, tuple)):
        return type(found)(options(item) for item in found)
    if isinstance(found, str) and "://" in found:
        return text(found)
    return found


def _under(key: Any, found: Any) -> Any:
    if not is_secret_key(key) or found in (None, "") or isinstance(found, Mapping):
        return options(found)
    return MASK


def value(key: str, found: Any) -> Any:
    """A setting for display: masked whole when its name is secret, else :func:`options`."""
    if isinstance(found, Mapping):
        return options(found)
    return _under(key, found) if found not in ([], ()) else found


def text(message: str) -> str:
    """Free text with every URL redacted and every ``secret=value`` pair masked."""
    if not message:
        return message
    redacted = _URL_TOKEN.sub(_url_token, message)
    return _PAIR.sub(_mask_pair, redacted)


def _url_token(match: re.Match[str]) -> str:
    token = match.group(0)
    body = token.rstrip(":,.;)")  # sentence punctuation after a URL is not part of it
    return url(body) + token[len(body):]


def _mask_pair(match: re.Match[str]) -> str:
    if not is_secret_key(match.group("name"), key_suffix=False) or match.group("value") == MASK:
        return match.group(0)
    return f"{match.group('name')}{match.group('sep')}{MASK}"
