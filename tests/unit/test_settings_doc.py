"""docs/settings.md is generated from the settings object and cannot drift from it."""

from __future__ import annotations

from conveyor._config import Settings
from conveyor._settings_doc import PAGE, main, render


def test_the_committed_settings_page_is_the_generated_one() -> None:
    assert PAGE.read_text() == render(), "run: python -m conveyor._settings_doc"
    assert main(["--check"]) == 0


def test_the_page_lists_every_setting_and_every_no_effect_name() -> None:
    page = render()
    for name in Settings.known():
        assert f"| `{name}` |" in page, name
