"""PostgreSQL-side servers a test starts itself: a PgBouncer, and a PostgreSQL it may kill.

Both run as the ``postgres`` user (neither will run as root): when the tests
run as root, commands go through ``runuser -u postgres --`` and their files
live in a directory made under ``/tmp`` and handed to that user (pytest's own
temporary directories are private to root).  Each listens on a free loopback
port; each is stopped by its fixture.

* :class:`PgBouncer` fronts the shared test server (127.0.0.1:5432) in one
  pool mode, ``auth_type = trust`` (a password in the client's URL is then
  never asked for, which lets tests plant one and look for it in logs).
* :class:`PostgresServer` is ``initdb``'d once per session (PostgreSQL 15's
  binaries), so fault tests can terminate its backends, restart it, kill it
  in immediate mode and change its settings without touching anyone else's.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from .faults.harness import free_port
from .integration.processes import wait_for

PGBOUNCER = "/usr/sbin/pgbouncer"


def _as_postgres() -> list[str]:
    """The prefix that runs a command as ``postgres`` (nothing when we are not root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _owned_directory(prefix: str) -> Path:
    """A fresh directory the server's user may write (see the module docstring)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


def _write_owned(path: Path, text: str) -> None:
    path.write_text(text)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def with_host(dsn: str, port: int, password: str | None = None) -> str:
    """``dsn`` (``postgresql://user@host:port/db``) pointed at 127.0.0.1:``port``."""
    scheme, rest = dsn.split("://", 1)
    userinfo, _, after = rest.rpartition("@")
    user = userinfo.split(":", 1)[0] or "postgres"
    path = after.split("/", 1)[1] if "/" in after else ""
    secret = f":{password}" if password else ""
    return f"{scheme}://{user}{secret}@127.0.0.1:{port}/{path}"


class PgBouncer:
    """A ``pgbouncer`` in one ``pool_mode`` in front of ``server_port``."""

    def __init__(self, pool_mode: str, server_port: int = 5432, pool_size: int = 12) -> None:
        self.pool_mode = pool_mode
        self.server_port = server_port
        self.pool_size = pool_size
        self.port = free_port()
        self.directory: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("pgbouncer") or (PGBOUNCER if os.path.exists(PGBOUNCER) else None)

    def start(self) -> None:
        binary = self.binary()
        assert binary is not None, "pgbouncer is not installed"
        self.directory = directory = _owned_directory("conveyor-pgbouncer-")
        _write_owned(directory / "userlist.txt", '"postgres" ""\n')
        # max_db_connections bounds what this bouncer takes from the shared server, and
        # server_idle_timeout gives back what it no longer uses within seconds.
        _write_owned(directory / "pgbouncer.ini", f"""[databases]
* = host=127.0.0.1 port={self.server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "userlist.txt"}
pool_mode = {self.pool_mode}
default_pool_size = {self.pool_size}
max_db_connections = {self.pool_size}
max_client_conn = 400
server_idle_timeout = 2
server_reset_query = DISCARD ALL
logfile = {directory / "pgbouncer.log"}
""")
        # -u: pgbouncer drops root itself (runuser would hold its stop back 2 s).
        user = ["-u", "postgres"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen([binary, *user, str(directory / "pgbouncer.ini")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(lambda: _answers(self.port) or self.proc is None or self.proc.poll() is not None,
                 15, f"pgbouncer on port {self.port}")
        assert self.proc.poll() is None, f"pgbouncer exited: {self.log()[-2000:]}"

    def log(self) -> str:
        if self.directory is None or not (self.directory / "pgbouncer.log").exists():
            return ""
        return (self.directory / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self.proc = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def postgres_bin() -> Path | None:
    """PostgreSQL 15's server binaries (``initdb``, ``pg_ctl``), or another version's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: (not p.startswith("/usr/lib/postgresql/15/"), p))
    return Path(found[0]).parent if found else None


class PostgresServer:
    """A PostgreSQL server of the test run's own (see the module docstring).

    ``fsync = off`` costs nothing here: the faults kill processes, not the
    machine, so written WAL survives in the page cache; commits still wait
    for their WAL write (``synchronous_commit`` stays on), so an immediate
    shutdown loses no acknowledged transaction.
    """

    def __init__(self) -> None:
        bindir = postgres_bin()
        assert bindir is not None, "PostgreSQL's server binaries are not installed"
        self.bindir = bindir
        self.port = free_port()
        self.directory = _owned_directory("conveyor-postgres-")
        self.data = self.directory / "data"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_as_postgres(), *args], capture_output=True, text=True,
                              timeout=timeout, check=True, cwd=self.directory)

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"""
port = {self.port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{self.directory}'
max_connections = 200
shared_buffers = 32MB
fsync = off
full_page_writes = off
log_min_messages = warning
""")

    def start(self) -> None:
        self._pg_ctl("start", "-l", str(self.directory / "server.log"))

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("restart", "-m", mode, "-l", str(self.directory / "server.log"))

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args)

    def dsn(self, database: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
