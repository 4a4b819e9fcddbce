"""The HTML pages: server-rendered shells that the page's script fills and refreshes.

Templates are plain ``string.Template`` files in ``templates/`` (no template
engine to install); every value substituted into them is HTML-escaped.  The
scripts in ``static/`` poll the JSON API every 1.5 s while the tab is
visible.  No inline script and no external resource: the pages work offline
and under a strict Content-Security-Policy.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from string import Template

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
REFRESH_MS = 1500

#: (template, path, title): the navigation, in order.
PAGES = (
    ("overview", "/", "Overview"),
    ("workers", "/workers", "Workers"),
    ("queues", "/queues", "Queues"),
    ("tasks", "/tasks", "Tasks"),
    ("dead-letters", "/dead-letters", "Dead letters"),
    ("schedules", "/schedules", "Schedules"),
)


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES / f"{name}.html").read_text(encoding="utf-8"))


def _nav(active: str) -> str:
    links = []
    for name, path, title in PAGES:
        current = ' aria-current="page" class="active"' if name == active else ""
        links.append(f'<a href="{path}"{current}>{html.escape(title)}</a>')
    return "\n".join(links)


def render(name: str, title: str, request: Request, nav: str | None = None,
           **values: str) -> HTMLResponse:
    """A page: its template inside ``base.html``, values escaped."""
    state = request.scope.get("state", {})
    safe = {k: html.escape(v, quote=True) for k, v in values.items()}
    content = _template(name).substitute(safe)
    page = _template("base").substitute(
        title=html.escape(title), nav=_nav(nav or name), content=content, page=name,
        user=html.escape(str(state.get("user") or "")),
        role=html.escape(str(state.get("role") or "")), refresh=str(REFRESH_MS),
    )
    return HTMLResponse(page, headers={"cache-control": "no-store"})


def _page(name: str, title: str) -> Route:
    path = next(p for n, p, _ in PAGES if n == name)

    def endpoint(request: Request) -> Response:
        return render(name, title, request)

    return Route(path, endpoint, name=name)


def task_page(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    return render("task", f"Task {task_id}", request, nav="tasks", task_id=task_id)


def routes() -> list[Route]:
    return [*(_page(name, title) for name, _, title in PAGES),
            Route("/tasks/{task_id}", task_page, name="task")]
