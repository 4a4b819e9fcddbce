"""``from conveyor import current_app``: Celery's ``celery.current_app``.

Celery code reads ``current_app.conf``, calls ``current_app.send_task(...)``
or looks tasks up in ``current_app.tasks`` from modules imported before any
app exists.  The object here forwards each attribute access to the app that
is current at that moment (the last one created, or the one marked with
``set_current()``; a default app if there is none), so such code keeps
following the current app.  Call it (``current_app()``) to get the app
itself, e.g. for ``isinstance`` or identity checks; Celery's
``current_app._get_current_object()`` does the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor import _state

if TYPE_CHECKING:
    from conveyor.app import Conveyor


class CurrentApp:
    """Forwards attribute access to the current app; calling it returns that app."""

    __slots__ = ()

    def __call__(self) -> Conveyor:
        return _state.current_app()

    def _get_current_object(self) -> Conveyor:
        return _state.current_app()

    def __getattr__(self, name: str) -> Any:
        return getattr(_state.current_app(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(_state.current_app(), name, value)

    def __repr__(self) -> str:
        return f"<current_app: {_state.current_app()!r}>"


current_app = CurrentApp()
