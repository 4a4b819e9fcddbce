"""One rule for hiding secrets in URLs, options and free text.

Every error, log line, report, health check and API answer that can carry a
broker or store URL, or an options dict, passes through here, so a password
never leaves the process that was given it.  The rule:

* a URL's userinfo password becomes ``********`` (the user name stays: it helps
  tell two servers apart and is not a secret);
* a query parameter whose *name* looks secret (see :func:`is_secret_key`)
  keeps its name and loses its value: ``?password=********``; one whose
  value is a URL (percent-encoded or not) has that URL redacted by this rule;
* in an options mapping (``broker_transport_options``, ...) the value under a
  secret-looking key becomes ``********``, at any depth, and string values that
  are URLs are redacted as URLs;
* free text (an exception message, a log line) has every ``scheme://...``
  token redacted as a URL and every ``name=value`` pair with a secret name
  masked.

:class:`conveyor.exceptions.ConveyorError` applies :func:`text` to its
arguments and the CLI's log formatter to each formatted line, so new call
sites are safe without remembering to call anything.

A task's *arguments* follow a second rule, :func:`arguments`: only what the
sender or the task declared is hidden (Celery's ``argsrepr``/``kwargsrepr``
per call, the task option ``redact=[...]``), since guessing from argument
names would also hide values people need to see.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

__all__ = ["MASK", "arguments", "arguments_hidden", "is_secret_key", "options", "text", "url",
           "value"]

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
    name, eq, value = pair.partition("=")
    if eq and is_secret_key(name):
        return f"{name}={MASK}"
    decoded = unquote(value)
    if "://" in decoded:  # a URL inside a URL (PostgreSQL's listen_url=): its own password
        return f"{name}={url(decoded) if decoded == value else quote(url(decoded), safe=':/@*?=')}"
    return pair


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


def _names(headers: Mapping[str, Any] | None, keys: Collection[str]) -> frozenset[str]:
    found = headers.get("redact") if headers else None
    sent = [k for k in found if isinstance(k, str)] if isinstance(found, (list, tuple)) else []
    return frozenset(keys).union(sent) if sent else frozenset(keys)


def _repr_header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    found = headers.get(name) if headers else None
    return found if isinstance(found, str) else None


def arguments_hidden(headers: Mapping[str, Any] | None, keys: Collection[str] = ()) -> bool:
    """Does anything hide this call's arguments (a repr header, a key to redact)?"""
    return bool(_names(headers, keys) or _repr_header(headers, "argsrepr") is not None
                or _repr_header(headers, "kwargsrepr") is not None)


def arguments(args: Any, kwargs: Any, headers: Mapping[str, Any] | None = None,
              keys: Collection[str] = ()) -> tuple[Any, Any]:
    """A task call's ``(args, kwargs)`` as people may see and stores may keep them.

    * the message's ``argsrepr`` / ``kwargsrepr`` headers (Celery's per-call
      ``apply_async`` options) replace the positional (resp. keyword)
      arguments whole, as the strings the sender gave;
    * else, under every name in ``keys`` (the task's ``redact`` option) or in
      the message's ``redact`` header (the sender's copy of it), a keyword
      argument's value, and the value under that key in any dict among the
      arguments at any depth, becomes :data:`MASK`.

    With nothing declared the arguments come back as they are (the same objects).
    """
    names = _names(headers, keys)
    shown_args = _repr_header(headers, "argsrepr")
    shown_kwargs = _repr_header(headers, "kwargsrepr")
    if shown_args is None:
        shown_args = _masked(args, names) if names else args
    if shown_kwargs is None:
        shown_kwargs = _masked(kwargs, names) if names else kwargs
    return shown_args, shown_kwargs


def _masked(found: Any, names: frozenset[str]) -> Any:
    if isinstance(found, Mapping):
        return {k: MASK if k in names else _masked(v, names) for k, v in found.items()}
    if isinstance(found, (list, tuple)):
        items = [_masked(item, names) for item in found]
        return items if isinstance(found, list) else tuple(items)
    return found
