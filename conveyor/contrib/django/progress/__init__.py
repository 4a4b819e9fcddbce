"""Progress bars for long tasks in the project's own pages (celery-progress's shape).

Three parts, one per side of the trip:

* the task reports with :class:`ProgressRecorder` (``set_progress(i, total,
  description)``), which is ``update_state(state="PROGRESS", meta=...)`` with
  the ``current``/``total`` keys the monitor already draws;
* the view that started the task calls :func:`track` so the browser's session
  owns the id; ``path("progress/", include("conveyor.contrib.django.progress.urls"))``
  serves ``<task_id>/`` as JSON (:func:`progress_info`) to that session only;
* ``{% load conveyor_progress %}{% progress_bar task_id %}`` draws an
  accessible bar that ``conveyor/progress.js`` polls and updates.

Ownership is the session: a task id not tracked by the asking session is
answered 404, exactly as an id nobody ever sent, so a stranger learns nothing
(not even that the id exists).  See docs/django.md, "Progress bars".
"""

from conveyor.contrib.django.progress._info import progress_info
from conveyor.contrib.django.progress._ownership import MAX_TRACKED, owns, track
from conveyor.contrib.django.progress._recorder import ProgressRecorder
from conveyor.contrib.django.progress._views import task_progress

__all__ = ["MAX_TRACKED", "ProgressRecorder", "owns", "progress_info", "task_progress", "track"]
