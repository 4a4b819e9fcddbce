"""Run a page's marked steps (see ``runbook.py``) in a project folder.

One ``Runner`` per page run: it keeps the background programs the page
starts and stops them at the end, and stops any daemon the page left
behind (found by the pidfiles in the project folder), so a failing page
leaves no process running.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.docs.runbook import (
    Step,
    commands,
    console_session,
    is_session,
    shell_session,
    steps,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# What each background program prints once it is up (the monitor: once its port
# is bound, so a port held by another process fails here, not at the next curl).
STARTED = {"worker": "ready", "beat": "starting", "monitor": "Uvicorn running on"}
# `expect` asks again for this long: programs a page starts take a while to come up.
EXPECT_WITHIN = 60.0
SESSION_TIMEOUT = 120.0
_SENTINEL = "--- docs-test output ---"
ACTIONS = frozenset({"project", "write", "append", "sh", "expect", "console", "background",
                     "python", "django-shell", "error-contains"})

# The interpreter behind a page's `python` blocks: one per page, so a block
# sees the names the blocks above it defined, as a reader's session would.
# It reads one JSON list of [code, shown] per line and answers one JSON line.
_SESSION = f"""
import contextlib, io, json, sys, traceback
namespace = {{"__name__": "__main__"}}
for request in sys.stdin:
    out, ok = io.StringIO(), True
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            for code, shown in json.loads(request):
                if shown:
                    value = eval(compile(code, "<page>", "eval"), namespace)
                    print({_SENTINEL!r})
                    print(repr(value))
                else:
                    exec(compile(code, "<page>", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            ok = False
    sys.__stdout__.write(json.dumps({{"ok": ok, "out": out.getvalue()}}) + "\\n")
    sys.__stdout__.flush()
"""


def run(cmd: list[str] | str, cwd: Path, env: dict[str, str], timeout: float = 300,
        check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, shell=isinstance(cmd, str), text=True,
                          capture_output=True, timeout=timeout, input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def transcript_script(body: str) -> tuple[str, list[str]]:
    """A ``>>>`` session as a script that prints each shown output after a marker."""
    lines: list[str] = []
    expected: list[str] = []
    for statement, output in shell_session(body):
        if output:
            # On lines of their own, so a comment after the statement stays a comment.
            lines += [f"print({_SENTINEL!r})", f"print(repr(\n{statement}\n))"]
            expected.append(output)
        else:
            lines.append(statement)
    return "\n".join(lines) + "\n", expected


def check_transcript(stdout: str, expected: list[str]) -> None:
    """Each output the page shows is what the statement printed, in order."""
    chunks = stdout.split(_SENTINEL + "\n")[1:]
    assert len(chunks) == len(expected), stdout
    for chunk, want in zip(chunks, expected, strict=True):
        wanted = want.splitlines()
        assert chunk.splitlines()[:len(wanted)] == wanted, f"expected {want!r}, got:\n{chunk}"


class Runner:
    """The steps of one page, run in ``project`` with the docs virtualenv's ``env``."""

    def __init__(self, project: Path, env: dict[str, str], logs: Path,
                 substitutions: dict[str, str],
                 projects: Callable[[str], Path] | None = None) -> None:
        self.project, self.env, self.logs = project, env, logs
        self.substitutions = substitutions
        self.projects = projects
        self.background: list[subprocess.Popen[bytes]] = []
        self.session: subprocess.Popen[str] | None = None

    def substitute(self, text: str) -> str:
        for placeholder, real in self.substitutions.items():
            text = text.replace(placeholder, real)
        return text

    def run_page(self, page: Path, build_only: bool = False) -> int:
        """Run the page's steps, and return how many ran.

        With ``build_only``, run only what builds the page's project: every file
        it writes, and the commands before its first background program.
        """
        done, started = 0, False
        for step in steps(page):
            started = started or step.action == "background"
            if build_only and not (step.action in ("write", "append", "project")
                                   or (step.action == "sh" and not started)):
                continue
            try:
                self.run_step(step)
            except AssertionError as exc:
                raise AssertionError(f"{page.name}:{step.line}: {exc}") from exc
            done += 1
        return done

    def run_step(self, step: Step) -> None:
        arg, body = self.substitute(step.arg), self.substitute(step.body)
        if step.action not in ACTIONS:
            raise AssertionError(f"unknown docs-test action {step.action!r}")
        getattr(self, "_" + step.action.replace("-", "_"))(arg, body)

    # --- actions ------------------------------------------------------------

    def _project(self, arg: str, body: str) -> None:
        assert self.projects is not None, "no project builder given"
        shutil.copytree(self.projects(arg), self.project, dirs_exist_ok=True, symlinks=True)

    def _write(self, arg: str, body: str) -> None:
        target = self.project / arg
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)

    def _append(self, arg: str, body: str) -> None:
        target = self.project / arg
        target.write_text(target.read_text() + body)

    def _sh(self, arg: str, body: str) -> None:
        for command in commands(body):
            run(command, self.project, self.env)

    def _expect(self, arg: str, body: str) -> None:
        """``expect [exit=N] TEXT``: the last command exits N (0) showing TEXT."""
        status = 0
        if arg.startswith("exit="):
            code, _, arg = arg.partition(" ")
            status = int(code.removeprefix("exit="))
        *first, last = commands(body)
        for command in first:
            run(command, self.project, self.env)
        deadline = time.monotonic() + EXPECT_WITHIN
        while True:
            proc = run(last, self.project, self.env, check=False, timeout=60)
            shown = proc.stdout + proc.stderr
            if proc.returncode == status and arg in shown:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{last!r} (exit {proc.returncode}) never showed {arg!r}:"
                                     f"\n{shown}")
            time.sleep(0.5)

    def _console(self, arg: str, body: str) -> None:
        """A ``$ command`` transcript: every command succeeds, and the first line
        shown after one (a table's header, say) is among its output lines."""
        for command, shown in console_session(body):
            proc = run(command, self.project, self.env, timeout=120)
            if shown:
                got = {" ".join(line.split()) for line in proc.stdout.splitlines()}
                assert " ".join(shown[0].split()) in got, f"{command!r}: no {shown[0]!r} in\n" \
                    f"{proc.stdout}"

    def _background(self, arg: str, body: str) -> None:
        log = self.logs / f"{arg}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(body.strip(), shell=True, cwd=self.project, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.background.append(proc)
        self._wait_for(log, STARTED[arg], proc)

    def _python(self, arg: str, body: str) -> None:
        """Run the block in the page's Python session; check the outputs it shows."""
        if self.session is None:
            self.session = subprocess.Popen(["python", "-c", _SESSION], cwd=self.project,
                                            env=self.env, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True)
        assert self.session.stdin is not None and self.session.stdout is not None
        if is_session(body):
            pairs = shell_session(body)
            request = [(code, bool(shown)) for code, shown in pairs]
            expected = [shown for _, shown in pairs if shown]
        else:
            request, expected = [(body, False)], []
        self.session.stdin.write(json.dumps(request) + "\n")
        self.session.stdin.flush()
        # A `.get()` that never returns must fail the page, not hang it.
        ready, _, _ = select.select([self.session.stdout], [], [], SESSION_TIMEOUT)
        assert ready, f"the block did not finish within {SESSION_TIMEOUT:.0f}s"
        answer = json.loads(self.session.stdout.readline() or '{"ok": false, "out": "died"}')
        assert answer["ok"], answer["out"]
        check_transcript(answer["out"], expected)

    def _django_shell(self, arg: str, body: str) -> None:
        self._script(["python", "manage.py", "shell", "-c"], body)

    def _error_contains(self, arg: str, body: str) -> None:
        """A mistyped setting stops Django with the message the page quotes."""
        name, _, value = arg.partition("=")
        settings = self.project / "proj" / "settings.py"
        original = settings.read_text()
        settings.write_text(original + f"\n{name} = {value}\n")
        try:
            proc = run(["python", "manage.py", "check"], self.project, self.env, check=False,
                       timeout=60)
        finally:
            settings.write_text(original)
        assert proc.returncode != 0
        assert body.strip() in proc.stderr, proc.stderr

    # --- helpers --------------------------------------------------------------

    def _script(self, prefix: list[str], body: str) -> None:
        if not is_session(body):
            run([*prefix, body], self.project, self.env, timeout=120)
            return
        script, expected = transcript_script(body)
        proc = run([*prefix, script], self.project, self.env, timeout=120)
        check_transcript(proc.stdout, expected)

    def _wait_for(self, path: Path, text: str, proc: subprocess.Popen[bytes],
                  timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in path.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} from {path.stem}:\n{path.read_text(errors='replace')}")

    def close(self) -> None:
        """Stop what the page started: its session, background programs, then daemons."""
        if self.session is not None:
            self.session.kill()
            self.session.communicate(timeout=30)
        for proc in self.background:
            _stop_group(proc)
        for pidfile in self.project.rglob("*.pid"):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            _stop_pid(pid)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _stop_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM a daemon the page left running, and SIGKILL it if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
