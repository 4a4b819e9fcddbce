"""``conveyor._lua.with_helpers``: a script carries only the prelude helpers it uses.

Every call of a script runs its whole text, so an unused helper is a closure
made per call for nothing; a helper wrongly left out would break the script.
"""

from __future__ import annotations

import re
from importlib import resources

from conveyor._lua import with_helpers
from conveyor.brokers.redis import _SCRIPTS

PRELUDE = """\
-- header, not a definition
local P = ARGV[1]
local MSG = P .. ':msg'
local A, B = 1, 2

-- about ready_key
local function ready_key(queue) return P .. ':ready:' .. queue end
local function unused() return MSG end

-- wake uses ready_key
-- (two comment lines)
local function wake(queue)
  redis.call('LPUSH', ready_key(queue), '1')
end
"""


def defined(text: str) -> set[str]:
    found = set(re.findall(r"^local function (\w+)", text, re.M))
    for names in re.findall(r"^local (\w+(?:\s*,\s*\w+)*)\s*=", text, re.M):
        found.update(re.split(r"\s*,\s*", names))
    return found


def test_a_script_gets_what_it_names_and_what_those_need() -> None:
    script = "wake(ARGV[2])\nreturn B"
    text = with_helpers(script, PRELUDE)
    assert defined(text) == {"P", "A", "B", "ready_key", "wake"}
    assert text.endswith(script)
    # The comments travel with their definitions; the prelude's order is kept.
    assert "-- about ready_key\nlocal function ready_key" in text
    assert "-- wake uses ready_key\n-- (two comment lines)\nlocal function wake" in text
    assert text.index("local P") < text.index("ready_key") < text.index("local function wake")


def test_a_name_in_a_comment_does_not_pull_a_helper_in() -> None:
    text = with_helpers("-- unused() and MSG are only mentioned here\nreturn 1", PRELUDE)
    assert defined(text) == set()


def test_every_broker_script_defines_each_helper_it_calls_and_no_other() -> None:
    prelude = resources.files("conveyor.brokers").joinpath(
        "redis_scripts/_common.lua").read_text(encoding="utf-8")
    helpers = defined(prelude)
    for name, script in _SCRIPTS.items():
        own = resources.files("conveyor.brokers").joinpath(
            f"redis_scripts/{name}.lua").read_text(encoding="utf-8")
        code = re.sub(r"--[^\n]*", "", script.script)
        carried = defined(script.script) & helpers
        for helper in carried:  # each carried helper is used by something after it
            uses = len(re.findall(rf"\b{helper}\b", code))
            assert uses > 1, (name, helper)
        called = set(re.findall(r"\b(\w+)\s*\(", re.sub(r"--[^\n]*", "", own))) & helpers
        assert called <= carried, (name, called - carried)
        assert len(script.script) < len(prelude) + len(own)
