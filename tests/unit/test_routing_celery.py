"""Routing values in every form Celery accepts (Celery: app/routes.py, app/amqp.py Queues).

The send path builds the real message here; tests/integration/test_routing_priority.py
runs these through a worker.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from conveyor import Conveyor, Queue
from conveyor.exceptions import ConfigurationError, QueueNotFound


def make_app(**settings: Any) -> Conveyor:
    url = f"memory://routing-{uuid.uuid4().hex}"
    return Conveyor("routing", broker=url, backend=url, set_as_current=False, **settings)


def queue_of(app: Conveyor, name: str, *args: Any, **options: Any) -> str:
    return app.build_message(name, args, {}, **options).queue


def route_by_name(name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
                  **kw: Any) -> Any:
    """A router for the dotted-path form (Celery's router signature)."""
    return {"queue": "by-path"} if name.startswith("path.") else None


class OldStyleRouter:
    """Celery's pre-4.0 router class: instantiated, then ``route_for_task`` asked."""

    def route_for_task(self, task: str, args: Any = None, kwargs: Any = None) -> Any:
        return "old-style" if task.startswith("old.") else None


def test_dict_with_glob_regex_and_exact_keys() -> None:
    """Celery: MapRoute tries exact names, then globs and compiled regexes in order."""
    app = make_app(task_routes={
        "media.video.encode": "exact",
        re.compile(r"(video|image)\.tasks\..*"): {"queue": "media"},
        "feed.*": {"queue": "feeds", "priority": 2},
    })
    assert queue_of(app, "media.video.encode") == "exact"
    assert queue_of(app, "image.tasks.resize") == "media"
    assert queue_of(app, "feed.tasks.fetch") == "feeds"
    assert app.build_message("feed.tasks.fetch").priority == 2
    assert queue_of(app, "other.task") == "default"


def test_list_of_pairs_dicts_functions_and_paths_in_order() -> None:
    """Celery: task_routes as a list of routers, each a dict, pairs, a function or a path."""
    seen: list[Any] = []

    def by_argument(name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
                    **kw: Any) -> Any:
        seen.append(task)
        return "big" if args and args[0] > 100 else None

    app = make_app(task_routes=[
        [("feed.*", {"queue": "feeds"}), (re.compile(r"^img\."), "images")],  # Celery's docs
        ("pair.*", {"queue": "pairs"}),
        by_argument,
        "tests.unit.test_routing_celery.route_by_name",
        "tests.unit.test_routing_celery:OldStyleRouter",
        {"*": {"queue": "catch-all"}},
    ])

    @app.task(name="calc.sum")
    def calc(n: int) -> int:
        return n

    assert queue_of(app, "feed.x") == "feeds" and queue_of(app, "img.y") == "images"
    assert queue_of(app, "pair.z") == "pairs"
    assert queue_of(app, "calc.sum", 500) == "big"
    assert seen[-1] is calc  # Celery passes the task as task=
    assert queue_of(app, "calc.sum", 5) == "catch-all"
    assert queue_of(app, "path.a") == "by-path"
    assert queue_of(app, "old.b") == "old-style"


def test_a_router_function_alone_and_a_bad_path() -> None:
    app = make_app(task_routes=route_by_name)
    assert queue_of(app, "path.x") == "by-path" and queue_of(app, "x") == "default"
    broken = make_app(task_routes="tests.unit.test_routing_celery.no_such_router")
    with pytest.raises(ConfigurationError, match="cannot import router"):
        broken.build_message("any.task")


def test_call_then_task_then_routes_then_default() -> None:
    """Celery: apply_async options, then task attributes, then task_routes (routing guide)."""
    app = make_app(task_routes={"t.*": {"queue": "routed"}})

    @app.task(name="t.own", queue="own")
    def own() -> None: ...

    @app.task(name="t.plain")
    def plain() -> None: ...

    assert queue_of(app, "t.own") == "own"
    assert queue_of(app, "t.plain") == "routed"
    assert queue_of(app, "t.own", queue="call") == "call"
    assert queue_of(app, "t.plain", queue=Queue("as-object")) == "as-object"


def test_task_queues_accepts_queue_objects_kombu_like_objects_and_names() -> None:
    """Celery: app/amqp.py Queues takes kombu Queue objects, names or the dict form.
    The AMQP fields that do nothing on this broker are named in the worker's one
    startup warning (``no_effect_set``), not dropped."""
    class KombuLike:  # what kombu.Queue looks like to us
        def __init__(self, name: str) -> None:
            self.name, self.routing_key, self.queue_arguments = name, name, {"x-max-priority": 10}
            self.exchange, self.max_priority = None, None

    app = make_app(task_queues=(Queue("default"), KombuLike("reports"), "plain"))
    assert [q.name for q in app.conf.task_queues] == ["default", "reports", "plain"]
    said = app.conf.no_effect_set()["task_queues"]
    assert "routing_key" in said and "x-max-priority" in said and "no effect" in said
    legacy = make_app(task_queues={"a": {"routing_key": "a"}, "b": {}})
    assert [q.name for q in legacy.conf.task_queues] == ["a", "b"]
    assert legacy.conf.no_effect_set()["task_queues"].startswith("no effect here for routing_key")
    assert "task_queues" not in make_app(task_queues=["a", Queue("b")]).conf.no_effect_set()
    with pytest.raises(ConfigurationError, match="unknown queue option"):
        make_app(task_queues={"a": {"routing-key": "a"}})
    with pytest.raises(ConfigurationError, match="list of queue names"):
        make_app(task_queues="a,b")


def test_every_declaration_option_of_a_queue_is_named_when_unused() -> None:
    """Nothing given is dropped: Celery's dict form (``Queues.add_compat``, where the
    binding key is the routing key when none is given) and a kombu ``Queue``'s
    declaration options (its defaults: durable, not exclusive, no TTLs) that nothing
    here uses are named in the startup warning."""
    kombu = pytest.importorskip("kombu")
    legacy = make_app(task_queues={"a": {"binding_key": "a.#", "exchange_type": "topic",
                                         "durable": False}})
    assert legacy.conf.task_queues[0].routing_key == "a.#"
    assert legacy.conf.no_effect_set()["task_queues"].startswith(
        "no effect here for durable, exchange_type, routing_key: ")
    objects = make_app(task_queues=[kombu.Queue("k", message_ttl=60, durable=False),
                                    kombu.Queue("plain")])
    assert objects.conf.no_effect_set()["task_queues"].startswith(
        "no effect here for durable, message_ttl: ")


def test_create_missing_queues_off_refuses_undeclared_queues() -> None:
    """Celery: Router.expand_destination raises QueueNotFound when create-missing is off."""
    app = make_app(task_create_missing_queues=False,
                   task_queues=[Queue("default"), Queue("reports")])
    assert queue_of(app, "any.task", queue="reports") == "reports"
    assert queue_of(app, "any.task") == "default"
    with pytest.raises(QueueNotFound, match="'elsewhere' is missing from task_queues"):
        app.build_message("any.task", queue="elsewhere")
    bare = make_app(task_create_missing_queues=False)  # only the default queue is declared
    with pytest.raises(QueueNotFound):
        bare.build_message("any.task", queue="other")
    assert queue_of(make_app(), "any.task", queue="anything") == "anything"


def test_priority_precedence_call_task_route_default() -> None:
    """Celery: the call, then the task's priority, then the route; the default comes last here."""
    app = make_app(task_routes={"p.*": {"priority": 3}}, task_default_priority=5)

    @app.task(name="p.own", priority=8)
    def own() -> None: ...

    def priority_of(name: str, **options: Any) -> int:
        return app.build_message(name, (), {}, **options).priority

    assert priority_of("p.own", priority=1) == 1
    assert priority_of("p.own") == 8
    assert priority_of("p.routed") == 3
    assert priority_of("other") == 5
    with pytest.raises(ConfigurationError, match="0 most urgent"):
        priority_of("other", priority=10)


def test_priority_steps_are_checked() -> None:
    """kombu: priority_steps is a list of priorities; a bad one is named, not ignored."""
    app = make_app(broker_transport_options={"priority_steps": "0,3"})
    with pytest.raises(ConfigurationError, match="priority_steps"):
        app.send_task("any.task")
    stepped = make_app(broker_transport_options={"priority_steps": [0, 5]})
    message = stepped.build_message("any.task", priority=4)
    assert (message.priority, stepped.broker_priority(message)) == (4, 0)


def test_worker_refuses_undeclared_queues_when_create_missing_is_off() -> None:
    """Celery: worker -Q of a queue missing from task_queues fails when create-missing is off."""
    from conveyor.worker.main import Worker

    app = make_app(task_create_missing_queues=False, task_queues=["default", "reports"])
    assert Worker(app, queues=["reports"], pool="threads").queues == ["reports"]
    with pytest.raises(QueueNotFound, match="'nope'"):
        Worker(app, queues=["nope"], pool="threads")
