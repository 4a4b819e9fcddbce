"""``make demo`` works: the example shop runs end to end and every check passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.django.conftest import ON_POSTGRES, ROOT


@pytest.mark.slow
@pytest.mark.skipif(ON_POSTGRES, reason="the example runs on SQLite")
def test_the_demo_passes_every_check(tmp_path: Path) -> None:
    env = {**os.environ, "SHOP_VAR": str(tmp_path / "var")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([sys.executable, "examples/run_demo.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "9/9 checks passed" in done.stdout
    assert "FAIL" not in done.stdout
    assert (tmp_path / "var" / "shop.sqlite3").exists()
