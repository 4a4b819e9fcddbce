"""A Sentinel-managed Redis for tests: a master, two replicas, three sentinels.

Every process runs on a free loopback port with its files in a temporary
directory; sentinels get a generated config (they rewrite it).  One set
serves a pytest-xdist worker's whole session (the ``redis_sentinels``
fixture in ``tests/conftest.py``); a test that kills the master calls
:meth:`SentinelSet.restart` afterwards, which brings the killed server back
as a replica of the new master, so the next test finds the set whole.

Sentinels wait ``down-after-milliseconds`` (3 s) before they call a master
down: long enough that a loaded 2-core machine does not fail the master
over in the middle of an unrelated test.  A failover test shortens it for
its own duration (:meth:`SentinelSet.fast_failover`, 0.5 s).  With ``tls``
every server and sentinel listens for TLS only, and replicates, and talks to
the others, over TLS.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from .faults.harness import RedisServer, free_port
from .integration.processes import wait_for
from .tls import RedisTls

MASTER_NAME = "conveyor-test"
DOWN_AFTER_MS = 3000
FAST_DOWN_AFTER_MS = 500


class SentinelSet:
    """The master, its replicas and the sentinels watching them."""

    def __init__(self, directory: Path, replicas: int = 2, tls: RedisTls | None = None) -> None:
        self.directory = directory
        self.tls = tls
        self.servers = [RedisServer(self._dir("master"), tls=tls)]
        self.servers += [RedisServer(self._dir(f"replica{i}"), tls=tls)
                         for i in range(1, replicas + 1)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def _dir(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def replicas(self) -> int:
        return len(self.servers) - 1

    @property
    def url(self) -> str:
        """Celery's form, every sentinel listed; ``master_name`` is left to the options."""
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)

    def url_with(self, **query: str) -> str:
        """:attr:`url` with the query (``master_name``, ``prefix`` …) on its first address,
        where Celery reads the database and options from."""
        first, _, rest = self.url.partition(";")
        pairs = "&".join(f"{key}={value}" for key, value in query.items())
        return f"{first}/0?{pairs};{rest}"

    def start(self) -> None:
        master = self.servers[0]
        master.start()
        for replica in self.servers[1:]:
            replica.start("--replicaof", "127.0.0.1", str(master.port))
        for port in self.sentinel_ports:
            self._start_sentinel(port, master.port)
        wait_for(self.healthy, 30, "the sentinels to see the replicas and each other")

    def _start_sentinel(self, port: int, master_port: int) -> None:
        directory = self._dir(f"sentinel{port}")
        conf = directory / "sentinel.conf"
        listen = self.tls.conf(port) if self.tls else f"port {port}\n"
        conf.write_text(
            f"{listen}bind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 4000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 2\n")
        log = open(directory / "sentinel.log", "ab")  # noqa: SIM115
        self.sentinels.append(subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"], stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True))
        log.close()

    def _ask(self, port: int, *command: str) -> Any:
        tls = self.tls.client_kwargs() if self.tls else {}
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1,
                             socket_connect_timeout=1, **tls)
        try:
            return client.execute_command(*command)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def healthy(self) -> bool:
        """Every sentinel agrees on the master, sees the other sentinels and every
        replica up (so it could fail over again), and the master streams to all
        its replicas (its own ``INFO``: the sentinels refresh theirs every 10 s)."""
        masters = {self.master_port(port) for port in self.sentinel_ports}
        if len(masters) != 1 or None in masters:
            return False
        for port in self.sentinel_ports:
            info = self._ask(port, "SENTINEL", "MASTER", MASTER_NAME)
            replicas = self._ask(port, "SENTINEL", "REPLICAS", MASTER_NAME)
            if not isinstance(info, dict) or not isinstance(replicas, list):
                return False
            if info.get(b"flags") != b"master" or info.get(b"num-other-sentinels") != b"2":
                return False
            if sum(1 for r in replicas if r.get(b"flags") == b"slave") < self.replicas:
                return False
        return self._streaming(masters.pop())

    def _streaming(self, master: int | None) -> bool:
        client = self._server(master).client()
        try:
            info = client.info("replication")
        except redis.RedisError:
            return False
        finally:
            client.close()
        online = [key for key, value in info.items()
                  if key.startswith("slave") and isinstance(value, dict)
                  and value.get("state") == "online"]
        return info.get("role") == "master" and len(online) >= self.replicas

    def master_port(self, sentinel_port: int | None = None) -> int | None:
        """The master's port as a sentinel (the first that answers) sees it."""
        for port in [sentinel_port] if sentinel_port else self.sentinel_ports:
            reply = self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            if isinstance(reply, list | tuple) and len(reply) == 2:
                return int(reply[1])
        return None

    def _server(self, port: int | None) -> RedisServer:
        found = [server for server in self.servers if server.port == port]
        assert found, f"no server of this set on port {port}"
        return found[0]

    def flush(self) -> None:
        """Empty the master (the replicas follow)."""
        self._server(self.master_port()).flush()

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port."""
        server = self._server(self.master_port())
        server.kill()
        return server.port

    def restart(self, port: int) -> None:
        """Start a killed server again, as a replica of the current master (as the
        master if none was promoted), and wait until the sentinels see the set whole."""
        master = self.master_port()
        follow = ("--replicaof", "127.0.0.1", str(master)) if master not in (None, port) else ()
        self._server(port).start(*follow)
        wait_for(self.healthy, 30, f"server {port} to rejoin")

    @contextlib.contextmanager
    def fast_failover(self) -> Iterator[None]:
        """Sentinels that call the master down after 0.5 s, for one test."""
        for port in self.sentinel_ports:
            self._ask(port, "SENTINEL", "SET", MASTER_NAME,
                      "down-after-milliseconds", str(FAST_DOWN_AFTER_MS))
        try:
            yield
        finally:
            for port in self.sentinel_ports:
                self._ask(port, "SENTINEL", "SET", MASTER_NAME,
                          "down-after-milliseconds", str(DOWN_AFTER_MS))

    def stop(self) -> None:
        for proc in self.sentinels:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for server in self.servers:
            server.kill()
