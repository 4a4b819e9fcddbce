"""What a migration changed and what it could not map, with file and line.

The report is the migration's to-do list: every finding names a place in
the project and says what to do there, so nothing the rewrite could not
carry over is left for the user to discover at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, order=True)
class Finding:
    """One thing to look at: where it is and what to do."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Report:
    """Files rewritten (with their new text) and findings, for one project."""

    root: Path
    changed: dict[Path, tuple[str, str]] = field(default_factory=dict)  # path -> (old, new)
    findings: list[Finding] = field(default_factory=list)

    def note(self, path: Path, line: int, message: str) -> None:
        self.findings.append(Finding(self.relative(path), line, message))

    def relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)
