"""The monitor: a web dashboard, JSON API and Prometheus metrics, behind basic auth.

``conveyor -A proj monitor --port 5555 --basic-auth user:pass`` serves
:func:`conveyor.monitor.app.create_app` with uvicorn.  Everything it shows
comes from the broker, the result store and the event store
(:mod:`conveyor._events`), never from the monitor's own memory, so it can be
restarted, or run several times, and still shows the same numbers.

Modules: ``auth`` (basic auth), ``data`` (read models shared by the pages,
the API and the CLI), ``tasks`` (task search and detail), ``actions``
(retry, revoke, terminate, dead-letter replay and discard), ``api`` and
``openapi`` (JSON), ``metrics`` (Prometheus), ``pages`` (HTML), ``cli``.
Starlette, uvicorn and prometheus-client are only imported by the web parts
(``pip install conveyor[monitor]``).
"""

from __future__ import annotations
