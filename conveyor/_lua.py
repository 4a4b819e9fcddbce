"""Lua on Redis: the one way Conveyor loads and calls a script.

Every script is a :class:`LuaScript` value, its text and that text's SHA1,
built once at import (from package files with :func:`script_file`, or from
text).  It needs no client, so it can be a module constant and is shared by
every process and connection; this module imports the Redis client only
when a script runs, so modules that define scripts load without the extra.

A script is always called by ``EVALSHA``.  The server may not have it: it
was restarted, someone ran ``SCRIPT FLUSH``, or a failover promoted a
replica that never saw ``SCRIPT LOAD``.  It then answers ``NOSCRIPT``, and
the script is loaded and the call made once more — handled here, for:

* :func:`run` — one call on a pooled connection (:func:`conveyor._redis.call`,
  without redis-py's per-command layers);
* :func:`run_and_wait` — one call followed by ``WAIT`` on the same connection
  (``wait_replicas``);
* :func:`ensure_loaded` + :func:`queue` — calls inside a pipeline.  A
  ``NOSCRIPT`` there could not simply be retried (the pipeline's other
  commands have run), so the scripts are checked (``SCRIPT EXISTS``) and
  loaded before the pipeline is sent, as redis-py does for its own scripts.

The broker's pipelined ``enqueue_many`` keeps two chunks in flight and so
notices ``NOSCRIPT`` per chunk itself; it reloads through :func:`load`.

Shared helpers (a ``prelude`` file) are not prepended whole: every call of a
script runs its whole text, so each helper it carries costs a closure (and a
constant a string concatenation) per call, used or not.  :func:`with_helpers`
keeps only the definitions the script names, directly or through another
helper; for the broker's scripts that saves 2-6 µs of server time per call.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from conveyor._redis import call, give_back, lend

if TYPE_CHECKING:
    import redis

__all__ = ["LuaScript", "ensure_loaded", "load", "queue", "run", "run_and_wait",
           "script_file", "with_helpers"]


@dataclass(frozen=True)
class LuaScript:
    """A script's text and SHA1 (what ``EVALSHA`` names it by)."""

    script: str
    sha: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.script.encode()).hexdigest())


def script_file(package: str, path: str, *, prelude: str | None = None) -> LuaScript:
    """The script in ``package``'s file ``path`` (``"redis_scripts/ack.lua"``),
    after the helpers it uses from the file ``prelude`` when given."""
    root = resources.files(package)
    text = root.joinpath(path).read_text(encoding="utf-8")
    if prelude is not None:
        text = with_helpers(text, root.joinpath(prelude).read_text(encoding="utf-8"))
    return LuaScript(text)


# A top-level definition in a prelude: ``local function name(`` or ``local A, B =``.
_DEFINITION = re.compile(r"^local\s+(?:function\s+(\w+)|(\w+(?:\s*,\s*\w+)*)\s*=)", re.M)
_COMMENT = re.compile(r"--[^\n]*")  # (no prelude or script has "--" inside a string)
_NAME = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class _Helper:
    """One top-level definition of a prelude, with the comment above it."""

    defines: frozenset[str]
    uses: frozenset[str]
    text: str


def _helpers(prelude: str) -> list[_Helper]:
    """Split a prelude into its definitions; text before the first one is dropped.

    A definition runs from the comment block right above it to the next
    definition's comment block.
    """
    heads = list(_DEFINITION.finditer(prelude))
    starts = [_comment_start(prelude, head.start()) for head in heads]
    helpers: list[_Helper] = []
    for i, head in enumerate(heads):
        end = starts[i + 1] if i + 1 < len(heads) else len(prelude)
        names = head.group(1) or head.group(2)
        helpers.append(_Helper(frozenset(re.split(r"\s*,\s*", names)),
                               frozenset(_names(prelude[head.end():end])),
                               prelude[starts[i]:end]))
    return helpers


def _comment_start(text: str, start: int) -> int:
    """Where the comment lines directly above ``start`` (a line start) begin."""
    while start > 0:
        above = text.rfind("\n", 0, start - 1) + 1
        if not text[above:start].lstrip().startswith("--"):
            break
        start = above
    return start


def _names(code: str) -> set[str]:
    return set(_NAME.findall(_COMMENT.sub("", code)))


def with_helpers(script: str, prelude: str) -> str:
    """``script`` after the definitions of ``prelude`` it needs, in the prelude's order.

    A definition is needed when the script's code (comments aside) names it,
    or a needed definition does.  Lua resolves a ``local`` at compile time,
    so a helper left out that the script did use fails at ``SCRIPT LOAD``
    ("attempt to call a nil value" at the first call at worst), never silently.
    """
    helpers = _helpers(prelude)
    wanted = _names(script)
    kept = [False] * len(helpers)
    # Later definitions may only use earlier ones, so one pass from the end suffices.
    for i in range(len(helpers) - 1, -1, -1):
        if helpers[i].defines & wanted:
            kept[i] = True
            wanted |= helpers[i].uses
    chosen = "".join(h.text for h, keep in zip(helpers, kept, strict=True) if keep)
    return chosen + "\n" + script


def load(client: redis.Redis, script: LuaScript) -> None:
    """``SCRIPT LOAD``: the server has the script from now on (until it forgets)."""
    call(client, "SCRIPT", "LOAD", script.script)


def run(client: redis.Redis, script: LuaScript, keys: list[Any], args: list[Any]) -> Any:
    """``EVALSHA`` on a pooled connection; loads the script once if the server lacks it."""
    try:
        return call(client, "EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        load(client, script)
        return call(client, "EVALSHA", script.sha, len(keys), *keys, *args)


def run_and_wait(client: redis.Redis, script: LuaScript, args: list[Any],
                 replicas: int, timeout: float) -> tuple[Any, int]:
    """Run a script (no keys), then ``WAIT`` for ``replicas`` on the same connection.

    ``WAIT`` counts the replicas that confirmed every write made so far on
    *its* connection, so it must follow the write on the connection that
    made it.  Returns the script's reply and how many replicas confirmed.
    """
    pool = client.connection_pool
    conn = lend(pool)
    try:
        try:
            conn.send_command("EVALSHA", script.sha, 0, *args)
            reply = conn.read_response()
        except NoScriptError:
            conn.send_command("SCRIPT", "LOAD", script.script)
            conn.read_response()
            conn.send_command("EVALSHA", script.sha, 0, *args)
            reply = conn.read_response()
        conn.send_command("WAIT", replicas, max(1, int(timeout * 1000)))
        return reply, int(conn.read_response())
    finally:
        give_back(pool, conn)


def ensure_loaded(client: redis.Redis, *scripts: LuaScript) -> None:
    """Load whichever of ``scripts`` the server lacks (one ``SCRIPT EXISTS``)."""
    present = call(client, "SCRIPT", "EXISTS", *[s.sha for s in scripts])
    for script, there in zip(scripts, present, strict=True):
        if not there:
            load(client, script)


def queue(pipe: Any, script: LuaScript, keys: list[Any], args: list[Any]) -> None:
    """Add an ``EVALSHA`` to a pipeline (after :func:`ensure_loaded`)."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
