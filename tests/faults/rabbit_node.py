"""A RabbitMQ node of the fault suite's own, which it may stop, kill and alarm.

The shared RabbitMQ on 5672 serves other test runs: it is never restarted
or put under an alarm.  This node runs from the same installation with
everything of its own: node name, AMQP and distribution ports (free ones),
data and log directories, an empty plugin list (no management listener to
collide with), and an Erlang cookie in a home directory of its own, which
both the server and ``rabbitmqctl`` read from ``$HOME/.erlang.cookie``.

``advanced.config`` lowers ``channel_tick_interval`` (60 s by default) to
0.5 s: it is how often a channel checks ``consumer_timeout``, so the
consumer-timeout case need not wait a minute for the check.

Every ``rabbitmqctl`` call starts an Erlang VM (1-4 s on a loaded two-core
machine), so the tests call it as little as they can.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pika

from ..integration.processes import wait_for
from .harness import free_port

_LIB = Path("/usr/lib/rabbitmq/bin")  # the Debian package's scripts, without its su wrapper


def _tool(name: str) -> str | None:
    """The real script: /usr/sbin's wrapper would switch to the rabbitmq user (as root)
    and lose this node's environment."""
    direct = _LIB / name
    return str(direct) if direct.exists() else shutil.which(name)


class RabbitNode:
    """One ``rabbitmq-server`` on free ports with its own data, controlled by name."""

    def __init__(self, directory: Path, name: str, consumer_timeout_ms: int = 1_800_000,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        """``tls``: ``(ca, cert, key)``: the node also listens with TLS on
        :attr:`tls_port`, serving ``cert`` and requiring of every client a
        certificate that ``ca`` signed."""
        self.directory = directory
        self.tls = tls
        self.tls_port = port_outside_ephemeral_range() if tls else None
        self.name = f"{name}@localhost"
        self.consumer_timeout_ms = consumer_timeout_ms
        # A user of its own whose password no error or log line may show.
        self.user, self.password = "conveyor", f"fault-{secrets.token_hex(8)}"
        self.port = port_outside_ephemeral_range()
        self.dist_port = port_outside_ephemeral_range()
        self.started_in: float | None = None  # seconds the first start took

    @staticmethod
    def available() -> bool:
        return _tool("rabbitmq-server") is not None and _tool("rabbitmqctl") is not None

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}//"

    def connect(self) -> pika.BlockingConnection:
        """A plain pika connection of the test's own (to watch faults arrive)."""
        return pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", self.port,
            credentials=pika.PlainCredentials(self.user, self.password)))

    def _env(self) -> dict[str, str]:
        d = self.directory
        return {
            **os.environ,
            "HOME": str(d / "home"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),  # not /etc's NODENAME
            "RABBITMQ_PID_FILE": str(d / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def _write_config(self) -> None:
        d = self.directory
        home = d / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        (d / "rabbitmq.conf").write_text(
            f"default_user = {self.user}\ndefault_pass = {self.password}\n"
            f"consumer_timeout = {self.consumer_timeout_ms}\n" + self._tls_config())
        (d / "advanced.config").write_text("[{rabbit, [{channel_tick_interval, 500}]}].\n")

    def _tls_config(self) -> str:
        """The TLS listener's lines: clients verified against the CA."""
        if self.tls is None:
            return ""
        ca, cert, key = self.tls
        return (f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {ca}\nssl_options.certfile = {cert}\n"
                f"ssl_options.keyfile = {key}\nssl_options.verify = verify_peer\n"
                "ssl_options.fail_if_no_peer_cert = true\n")

    def start(self, timeout: float = 120) -> float:
        """Start the node (detached) and wait until its AMQP port answers; seconds taken."""
        self._write_config()
        began = time.monotonic()
        subprocess.run([_tool("rabbitmq-server") or "rabbitmq-server", "-detached"],
                       env=self._env(), check=True, capture_output=True,
                       start_new_session=True)
        wait_for(self.answers, timeout, f"RabbitMQ node {self.name} on port {self.port}",
                 interval=0.1)
        took = time.monotonic() - began
        if self.started_in is None:
            self.started_in = took
        return took

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n <this node> ...``; its output."""
        done = subprocess.run([_tool("rabbitmqctl") or "rabbitmqctl", "-n", self.name, *args],
                              env=self._env(), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def eval(self, expression: str) -> str:
        """Run an Erlang expression on the node (one CLI start for several steps)."""
        return self.ctl("eval", expression)

    def cue(self, expression: str) -> Cue:
        """``expression`` run on the node when the test says :meth:`Cue.go`."""
        return Cue(self, expression)

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.directory / "node.pid").read_text().strip())
        return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node's VM and wait until it is gone: SIGKILL cuts connections
        with no shutdown; SIGTERM is a clean stop (no CLI to start)."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        wait_for(lambda: not _alive(pid), 60, "the node to exit")
        wait_for(lambda: not self.answers(), 10, "the node's port to close")

    def stop(self) -> None:
        """Stop the node for good (session end)."""
        try:
            self.kill(signal.SIGTERM)
        except AssertionError:
            self.kill()

    def log(self) -> str:
        path = self.directory / "log" / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def port_outside_ephemeral_range() -> int:
    """A free port the kernel never hands to an outgoing connection.

    While the node is down, clients keep connecting to its port; with nothing
    listening, one of them may be given that very port as its own (a TCP
    self-connect) and hold it, so that the restarted node cannot listen
    (``could_not_start_listener``, seen once in a few runs)."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1025, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][:1] != "Z"  # not a zombie left unreaped
    return True


class Cue:
    """An Erlang expression the node runs when the test says so.

    ``rabbitmqctl eval`` starts a VM first, which takes seconds on a loaded
    machine: the expression waits on the node (polling for a file) until
    :meth:`go`, so the fault strikes when the test has set the scene, and
    the CLI's start is not part of any figure.  Used as a context manager,
    a cue is cancelled on the way out (a wait it has not passed ends).

    The expression may wait for further signals of the test's:
    ``Await("name", Ms)`` is ``go`` once the test has called
    ``signal("name")``, ``cancelled`` once the cue is cancelled, ``timeout``
    after ``Ms`` milliseconds.

    A signal is a file with the word ``go``, renamed into place.  Written in
    place, the node's poll (every 5 ms) could read it between its creation
    and its write, empty, and a go read as empty cancelled the fault: the
    test then waited for a fault that never came.  Measured with this poll,
    4 reads in 500 came back empty, and 216 in 500 while two other threads
    of the writing process kept the GIL busy (a thread that wants the GIL
    back after ``open`` may wait 5 ms for it).  The poll takes only the whole
    word, too.
    """

    def __init__(self, node: RabbitNode, expression: str) -> None:
        self._stem = node.directory / f"cue-{secrets.token_hex(4)}"
        self._ready = self._file("ready")
        self.error: BaseException | None = None
        self.output: str | None = None  # what the expression returned, as the CLI prints it
        body = expression.strip().removesuffix(".")
        waiting = (f'file:write_file("{self._ready}", <<>>), {self._await()}, '
                   f'case Await("go", 600000) of go -> begin {body} end; Other -> Other end.')
        self._thread = threading.Thread(target=self._run, args=(node, waiting), daemon=True)
        self._thread.start()  # the CLI starts meanwhile: make the cue before setting up

    def __enter__(self) -> Cue:
        return self

    def __exit__(self, *_: object) -> None:
        self._write("cancel", "cancel")
        self._thread.join(60)

    def _file(self, name: str) -> Path:
        return self._stem.with_suffix(f".{name}")

    def _await(self) -> str:
        """Erlang binding ``Await(Name, Ms)``: poll for a signal (see the class)."""
        return ('Await = fun(Name, Ms) -> '
                f'File = "{self._stem}." ++ Name, '
                'Until = erlang:monotonic_time(millisecond) + Ms, '
                'Poll = fun(Again) -> '
                f'case {{file:read_file(File), file:read_file("{self._file("cancel")}")}} of '
                '{{ok, <<"go">>}, _} -> go; '
                '{_, {ok, <<"cancel">>}} -> cancelled; '
                '_ -> case erlang:monotonic_time(millisecond) > Until of '
                'true -> timeout; false -> timer:sleep(5), Again(Again) end end end, '
                'Poll(Poll) end')

    def _write(self, name: str, word: str) -> None:
        """Put ``word`` in the signal file at once (a rename), never half-written."""
        partial = self._file(f"{name}-partial")
        partial.write_text(word)
        os.replace(partial, self._file(name))

    def _run(self, node: RabbitNode, expression: str) -> None:
        try:
            # The CLI lives from before the scene is set until the fault has
            # run: on a loaded machine that is over a minute (a CLI killed
            # by a timeout before its go takes the fault with it).
            self.output = node.ctl("eval", expression, timeout=600).strip()
        except BaseException as exc:  # reported by go(), done() and outcome()
            self.error = exc

    @property
    def ended(self) -> bool:
        """Whether the CLI has returned (the expression ran, failed or was cancelled)."""
        return not self._thread.is_alive()

    def outcome(self) -> str:
        """How the cue stands, for a failure message."""
        if not self.ended:
            return "rabbitmqctl eval is still running"
        if self.error is not None:
            return f"rabbitmqctl eval failed: {self.error}"
        return f"rabbitmqctl eval returned {self.output!r}"

    def wait_ready(self) -> None:
        """Wait until the expression waits on the node for its go."""
        wait_for(lambda: self._ready.exists() or self.ended, 120,
                 "rabbitmqctl eval to reach the node")
        if self.error is not None:
            raise self.error
        assert not self.ended, f"the cue ended before its go: {self.outcome()}"

    def go(self) -> None:
        """Wait until the expression waits on the node, then let it run."""
        self.wait_ready()
        self.signal("go")

    def signal(self, name: str) -> None:
        """End the expression's ``Await(name, ...)`` with ``go``."""
        self._write(name, "go")

    def done(self, timeout: float = 120) -> str:
        """Wait until the expression has returned; what it returned, or raise what
        the CLI reported."""
        self._thread.join(timeout)
        assert self.ended, "rabbitmqctl eval did not return"
        if self.error is not None:
            raise self.error
        return self.output or ""
