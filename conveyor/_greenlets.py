"""``-P gevent``: patch the worker process before anything else runs in it.

gevent's monkey patching replaces ``socket``, ``time.sleep``, ``threading``
and the rest with cooperative versions, so that a blocking call switches to
another greenlet instead of blocking the process.  It only works fully when
it happens before the patched modules are used: a ``threading.local``
subclass, a lock, or a name bound with ``from socket import ...`` while
unpatched stays unpatched.  Celery patches in its command-line entry, before
it imports its own package (``celery/__init__.py``
``maybe_patch_concurrency``); importing ``conveyor`` already imports
``socket``, ``ssl`` and ``threading``, so :func:`reexec_if_needed` instead
starts the same command again in a fresh interpreter that patches first
(same process id: ``os.execv``).

eventlet is refused: upstream deprecated it for new work, and it is a second
set of patching rules to keep true for little gain; gevent serves the same
programs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

GREENLET_POOLS = ("gevent", "eventlet")
# Run by the fresh interpreter: patch, then the ordinary command line.
_BOOT = ("from gevent import monkey; monkey.patch_all(); import sys; sys.argv[0] = 'conveyor'; "
         "from conveyor._cli import run; run()")
EVENTLET_REFUSED = (
    "-P eventlet: not supported; eventlet is deprecated upstream. Use -P gevent "
    "(pip install 'conveyor[gevent]'), which runs tasks in greenlets the same way")


def requested_pool(argv: Sequence[str]) -> str | None:
    """The ``-P``/``--pool`` value on a ``worker`` command line, if any."""
    if "worker" not in argv:
        return None
    pool = None
    for i, arg in enumerate(argv):
        if arg in ("-P", "--pool") and i + 1 < len(argv):
            pool = argv[i + 1]
        elif arg.startswith("--pool="):
            pool = arg.partition("=")[2]
        elif arg.startswith("-P") and len(arg) > 2 and not arg.startswith("--"):
            pool = arg[2:]
    return pool


def patched() -> bool:
    """Whether gevent patched this process (without importing gevent)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def reexec_if_needed(argv: Sequence[str]) -> None:
    """Start ``conveyor ... worker -P gevent`` again, patched first; returns
    when no greenlet pool was asked for, or this process is patched already."""
    if requested_pool(argv) != "gevent" or patched():
        return
    try:
        import gevent  # noqa: F401 - only to fail here, with a message, when it is missing
    except ImportError:
        raise SystemExit("-P gevent needs gevent: pip install 'conveyor[gevent]'") from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *_interpreter_options(), "-c", _BOOT, *argv[1:]])


def _interpreter_options() -> list[str]:
    """The ``-W`` and ``-X`` options this interpreter was started with, for the next."""
    options = [f"-W{w}" for w in sys.warnoptions]
    for key, value in sys._xoptions.items():
        options.append(f"-X{key}" if value is True else f"-X{key}={value}")
    return options


def check_pool(pool: str) -> None:
    """Refuse a greenlet pool this process cannot run (raises ``ConfigurationError``)."""
    from conveyor.exceptions import ConfigurationError

    if pool == "eventlet":
        raise ConfigurationError(EVENTLET_REFUSED)
    if pool == "gevent" and not patched():
        raise ConfigurationError(
            "the gevent pool needs a process gevent patched before Conveyor was imported: "
            "start it with `conveyor worker -P gevent` (worker_pool='gevent' alone is not "
            "enough), or call gevent.monkey.patch_all() first thing in your own program")
