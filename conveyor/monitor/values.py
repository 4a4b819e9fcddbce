"""Any stored value, made safe to show: the monitor must render every record.

Records and dead letters hold what tasks and producers put there: NaN and
Infinity (which Python's json writes but browsers' JSON cannot read), lone
surrogates (which no UTF-8 response can carry), values nested thousands of
levels deep, and strings of megabytes.  :func:`shown` turns any of them into
plain JSON within a size budget and says whether it cut anything, so one odd
record can neither break a page (a 500) nor make every poll of it huge; the
whole value stays downloadable from its own route.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from conveyor._serialization import printable

#: What one value may take in a response, in characters (roughly bytes).
BUDGET = 16 * 1024
#: Deeper than this, a value is shown as a marker.
MAX_DEPTH = 32
#: Items shown per list or object.
MAX_ITEMS = 200
NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


@dataclass
class _Budget:
    left: int
    cut: bool = False

    def spend(self, size: int) -> bool:
        """True if there is room for ``size`` more characters."""
        if size > self.left:
            self.cut = True
            return False
        self.left -= size
        return True


def shown(value: Any, budget: int = BUDGET) -> tuple[Any, bool]:
    """(a JSON-safe copy of ``value`` within ``budget``, whether anything was cut)."""
    state = _Budget(budget)
    return _shown(value, state, 0), state.cut


def _shown(value: Any, budget: _Budget, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        budget.spend(5)
        return value
    if isinstance(value, int):
        return _int(value, budget)
    if isinstance(value, float):
        budget.spend(24)
        return value if math.isfinite(value) else NONFINITE.get(value, "NaN")
    if isinstance(value, str):
        return _text(value, budget)
    if isinstance(value, (list, tuple, dict)):
        if depth >= MAX_DEPTH or not budget.spend(2):
            budget.cut = True
            return "…(nested deeper)" if depth >= MAX_DEPTH else "…"
        if isinstance(value, dict):
            return _object(value, budget, depth)
        return _list(value, budget, depth)
    return _text(repr(value), budget)


def _int(value: int, budget: _Budget) -> Any:
    if -(10**18) < value < 10**18:
        budget.spend(20)
        return value
    digits = len(str(abs(value))) if value.bit_length() < 14_000 else None
    budget.cut = True
    return f"<an integer of {digits or 'over 4,000'} digits>"


def _text(value: str, budget: _Budget) -> str:
    room = max(0, min(len(value), budget.left))
    budget.spend(room)
    if room < len(value):
        budget.cut = True
        return printable(value[:room], room) + f"…({len(value) - room:,} more characters)"
    return printable(value, room)


def _list(value: list[Any] | tuple[Any, ...], budget: _Budget, depth: int) -> list[Any]:
    out = []
    for index, item in enumerate(value):
        if index >= MAX_ITEMS or budget.left <= 0:
            budget.cut = True
            out.append(f"…({len(value) - index:,} more items)")
            break
        out.append(_shown(item, budget, depth + 1))
    return out


def _object(value: dict[Any, Any], budget: _Budget, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for index, (key, item) in enumerate(value.items()):
        if index >= MAX_ITEMS or budget.left <= 0:
            budget.cut = True
            out["…"] = f"{len(value) - index:,} more keys"
            break
        out[_text(str(key), budget)] = _shown(item, budget, depth + 1)
    return out


def dumps(content: Any) -> bytes:
    """JSON for a response: strict JSON as browsers read it, whatever ``content`` holds.

    The fast path is json's own; only content it refuses (NaN, a lone
    surrogate, nesting past the recursion limit) is made safe first.
    """
    try:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")
    except (ValueError, RecursionError, UnicodeEncodeError, TypeError):
        safe, _ = shown(content, budget=4 * 1024 * 1024)
        return json.dumps(safe, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")


def dumps_pretty(safe: Any) -> str:
    """Indented JSON text of a value :func:`shown` made safe."""
    return json.dumps(safe, ensure_ascii=False, allow_nan=False, indent=2)


def parse(body: bytes, limit: int) -> tuple[Any, str | None]:
    """(a stored JSON body parsed, or None; why it was not) without trusting it:
    bodies above ``limit`` bytes are not parsed (their size is the reason)."""
    if len(body) > limit:
        return None, f"{len(body):,} bytes: too large to show here"
    try:
        return json.loads(body), None
    except RecursionError:
        return None, "nested too deeply to show here"
    except ValueError as exc:
        return None, f"not JSON ({printable(str(exc), 200)})"
