"""URL scheme → backend class, one table per storage family, extended by entry points.

Every storage family (brokers, result stores, event stores, beat state,
control channels) is chosen by the scheme of a URL.  Each family is one
:class:`Family`: the schemes Conveyor ships, named as ``"module:attribute"``
strings so that nothing is imported until a URL asks for it, plus whatever
installed distributions declare under the family's entry-point group::

    [project.entry-points."conveyor.result_stores"]
    mystore = "mypackage.results:MyResultStore"

A scheme shipped here cannot be shadowed by a plug-in, so installing a
package never silently changes where existing tasks go.  What a family's
entry is called with (a URL and options, or the app) is that family's own
business: the registry only finds it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from conveyor.exceptions import ConfigurationError

__all__ = ["Family", "scheme_of"]

# Third-party clients that are optional extras: a missing one names its extra.
_EXTRAS = {"pika": "rabbitmq", "psycopg": "postgres", "psycopg_pool": "postgres"}


def scheme_of(url: str) -> str:
    """The lower-cased scheme of ``url``; a bare word (``django-db``) is its own scheme."""
    return url.split("://", 1)[0].lower() if "://" in url else url.strip().lower()


# RabbitMQ's schemes.  The test is here (for the package's own use, not
# exported) rather than in conveyor._amqp so that the settings and the stores,
# which ask it of every URL, do not load the RabbitMQ module into processes
# that never talk to RabbitMQ: each prefork child would hold it.
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def is_amqp(url: str) -> bool:
    return "://" in url and scheme_of(url) in _AMQP_SCHEMES


@dataclass(frozen=True)
class Family:
    """One storage family's scheme table."""

    #: What the family stores, for error messages ("broker", "result store").
    kind: str
    #: The entry-point group third-party backends register under.
    group: str
    #: Shipped schemes: scheme → ``"module:attribute"``.
    builtin: Mapping[str, str] = field(default_factory=dict)
    #: What to write instead, appended to the error for an unknown scheme.
    hint: str = ""

    def schemes(self) -> list[str]:
        """Every scheme this family can open, shipped ones first."""
        extra = [name for name in _plugins(self.group) if name not in self.builtin]
        return [*self.builtin, *sorted(extra)]

    def knows(self, scheme: str) -> bool:
        return scheme in self.builtin or scheme in _plugins(self.group)

    def load(self, scheme: str, *, setting: str, url_for_error: str = "") -> Any:
        """The class or factory registered for ``scheme``.

        Raises :class:`ConfigurationError` naming ``setting`` when the scheme
        is unknown, or the extra to install when its client is missing.
        """
        target = self.builtin.get(scheme) or _plugins(self.group).get(scheme)
        if target is None:
            shown = f" {url_for_error!r}" if url_for_error else ""
            hint = f"; {self.hint}" if self.hint else ""
            raise ConfigurationError(
                f"{setting}{shown}: no {self.kind} for scheme {scheme!r}; "
                f"known schemes: {', '.join(self.schemes())}{hint}")
        return _resolve(target, scheme, self.kind)


def _resolve(target: str, scheme: str, kind: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".", 1)[0]
        if top not in _EXTRAS:
            raise
        raise ConfigurationError(
            f"the {scheme}:// {kind} needs the {top} client, which is not installed: "
            f"pip install 'conveyor[{_EXTRAS[top]}]'") from None
    return getattr(module, attribute) if attribute else module


@functools.cache
def _plugins(group: str) -> dict[str, str]:
    """Entry points declared by installed distributions (read once per process)."""
    return {point.name.lower(): point.value for point in entry_points(group=group)}
