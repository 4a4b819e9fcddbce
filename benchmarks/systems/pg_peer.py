"""What the PostgreSQL peers (Procrastinate, PgQueuer) share: a schema of their own
on the benchmark database, emptied between phases and re-created by the peer's own
install command, and analysed once preloaded (so their lookups use their indexes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.systems.base import ROOT, System


class PostgresPeer(System):
    schema: str

    def install_command(self, bin_dir: Path) -> list[str]:
        """The peer's own command that creates its tables in ``schema``."""
        raise NotImplementedError

    def preloaded(self) -> None:
        from benchmarks.systems import pg

        pg.analyze(self.schema)

    def reset(self) -> None:
        from benchmarks.systems import pg

        pg.empty_schema(self.schema, install=self._install)

    def _install(self) -> None:
        from benchmarks import envs

        env = {**self.environment(), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        subprocess.run(self.install_command(envs.python_of(self.env).parent),
                       env=env, cwd=ROOT, check=True, capture_output=True)
