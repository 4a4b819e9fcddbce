"""Task failures to Sentry, once per failure, through ``sentry-sdk``'s integration interface.

    import sentry_sdk
    from conveyor.contrib.sentry import ConveyorIntegration

    sentry_sdk.init(dsn=..., integrations=[ConveyorIntegration()])

Built on Conveyor's ``task_failure`` signal (the ``sentry`` extra), which
the worker sends once, when a run ends in FAILURE: a run that retries sends
``task_retry`` instead, so a task that retries twice and then fails is one
event, and one that retries and then succeeds is none.  Each event carries:

* tags ``conveyor.task_name``, ``conveyor.task_id``, ``conveyor.retries``,
  ``conveyor.root_id`` (the workflow's first task) and, when an
  OpenTelemetry span is current (see :mod:`conveyor.contrib.opentelemetry`),
  ``trace_id`` in the OTel hex form, so the event and the trace find each
  other;
* a ``conveyor task`` context with the name, id, queue, retries and the
  arguments as people may see them: Celery's ``argsrepr``/``kwargsrepr``
  headers when the sender set them, else a short ``repr`` with the task's
  ``redact`` names and keyword arguments whose names look secret
  (``password``, ``token``, ...) masked by :mod:`conveyor._redact`; the
  values so hidden are also masked wherever else the event's text holds them
  (the traceback's local variables, the exception's message);
* the mechanism ``conveyor`` (unhandled), and the exception's traceback.

Failures the worker records outside a run (a hard time limit's kill, a
message given up after its worker died too often) also send
``task_failure`` and are reported the same way.  Do not enable Sentry's
own ``CeleryIntegration`` for Conveyor: it patches Celery, not this.
"""

from __future__ import annotations

import reprlib
from typing import Any

import sentry_sdk
from sentry_sdk.integrations import Integration
from sentry_sdk.utils import event_from_exception

from conveyor import _redact as redact
from conveyor import signals
from conveyor._context import Request

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 20


class ConveyorIntegration(Integration):
    """Reports each task failure to the Sentry client it is installed in."""

    identifier = "conveyor"

    @staticmethod
    def setup_once() -> None:
        signals.task_failure.connect(_report, weak=False, dispatch_uid="conveyor.contrib.sentry")


def _report(sender: Any = None, task_id: str | None = None,
            exception: BaseException | None = None, **_: Any) -> None:
    if exception is None or sentry_sdk.get_client().get_integration(ConveyorIntegration) is None:
        return
    request: Request | None = getattr(sender, "request", None)
    name = getattr(sender, "name", None) or str(sender)
    event, hint = event_from_exception(
        exception, client_options=sentry_sdk.get_client().options,
        mechanism={"type": "conveyor", "handled": False})
    secrets = _hidden_values(sender, task_id, request)
    if secrets:
        event = _scrubbed(_frames_serialized(dict(event)), secrets)
    with sentry_sdk.new_scope() as scope:
        for key, value in _tags(name, task_id, request).items():
            scope.set_tag(key, value)
        scope.set_context("conveyor task", _context(name, task_id, request, sender))
        scope.set_transaction_name(name)
        sentry_sdk.capture_event(event, hint=hint)


def _tags(name: str, task_id: str | None, request: Request | None) -> dict[str, Any]:
    tags: dict[str, Any] = {"conveyor.task_name": name, "conveyor.task_id": task_id}
    if request is not None and request.id == task_id:
        tags["conveyor.retries"] = request.retries
        tags["conveyor.root_id"] = request.root_id
    trace_id = _otel_trace_id()
    if trace_id:
        tags["trace_id"] = trace_id
    return tags


def _context(name: str, task_id: str | None, request: Request | None,
             sender: Any = None) -> dict[str, Any]:
    context: dict[str, Any] = {"name": name, "id": task_id}
    if request is None or request.id != task_id:
        return context
    keys = getattr(getattr(sender, "options", None), "redact", None) or ()
    args, kwargs = redact.arguments(tuple(request.args), dict(request.kwargs),
                                    request.headers or {}, keys)
    context.update({
        "queue": request.delivery_info.get("queue"), "retries": request.retries,
        "args": _shown(args), "kwargs": _shown(kwargs),
    })
    return context


def _shown(found: Any) -> str:
    """A repr header as given; else a short repr, secret-looking keys masked too."""
    return found if isinstance(found, str) else _REPR.repr(redact.options(found))


#: Hidden values shorter than this are not searched for in the event's text: masking
#: every "1" or "ok" in a traceback would make it unreadable and hide little.
_SHORTEST_SCRUBBED = 4


def _hidden_values(sender: Any, task_id: str | None, request: Request | None) -> set[str]:
    """The text of every argument value the task or the call hid (``redact`` names,
    ``argsrepr``/``kwargsrepr``): the traceback's local variables and the exception's
    message may hold them too."""
    if request is None or request.id != task_id:
        return set()
    keys = frozenset(getattr(getattr(sender, "options", None), "redact", None) or ())
    headers = request.headers or {}
    keys |= frozenset(k for k in headers.get("redact") or () if isinstance(k, str))
    found: set[str] = set()
    if isinstance(headers.get("argsrepr"), str):
        _collect(request.args, found)
    if isinstance(headers.get("kwargsrepr"), str):
        _collect(request.kwargs, found)
    _collect_under([*request.args, dict(request.kwargs)], keys, found)
    return {text for text in found if len(text) >= _SHORTEST_SCRUBBED}


def _collect(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            _collect(item, found)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        found.add(str(value))


def _collect_under(value: Any, keys: frozenset[str], found: set[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in keys:
                _collect(item, found)
            else:
                _collect_under(item, keys, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_under(item, keys, found)


def _frames_serialized(event: dict[str, Any]) -> dict[str, Any]:
    """Frames' local variables as Sentry would send them (reprs), so they can be searched."""
    from sentry_sdk.serializer import serialize

    for exc in (event.get("exception") or {}).get("values") or []:
        for frame in (exc.get("stacktrace") or {}).get("frames") or []:
            if "vars" in frame:
                frame["vars"] = serialize(frame["vars"])
    return event


def _scrubbed(value: Any, secrets: set[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, redact.MASK)
        return value
    if isinstance(value, dict):
        return {k: _scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, secrets) for v in value]
    return value


def _otel_trace_id() -> str | None:
    """The current OpenTelemetry trace id (hex), when the API is installed and a span is on."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


__all__ = ["ConveyorIntegration"]
