"""A Sentinel-managed Redis for fault tests: a master, two replicas, three sentinels.

Every process runs on a free loopback port with its files in the test's
temporary directory; sentinels get a generated config (they rewrite it).
``down-after-milliseconds`` is small so a killed master is replaced within
about a second or two.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import redis

from ..integration.processes import wait_for
from .harness import RedisServer, free_port

MASTER_NAME = "conveyor-test"
DOWN_AFTER_MS = 500


class SentinelSet:
    """The master, its replicas and the sentinels watching them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers = [RedisServer(self._dir("master"))]
        self.servers += [RedisServer(self._dir(f"replica{i}")) for i in (1, 2)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def _dir(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) + "/0"

    def start(self) -> None:
        master = self.servers[0]
        master.start()
        for replica in self.servers[1:]:
            replica.start()
            client = redis.Redis(port=replica.port)
            client.replicaof("127.0.0.1", master.port)
            client.close()
        for port in self.sentinel_ports:
            self._start_sentinel(port, master.port)
        wait_for(self._ready, 20, "the sentinels to see both replicas and each other")

    def _start_sentinel(self, port: int, master_port: int) -> None:
        directory = self._dir(f"sentinel{port}")
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 4000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 2\n")
        log = open(directory / "sentinel.log", "ab")  # noqa: SIM115
        self.sentinels.append(subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"], stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True))
        log.close()

    def _ask(self, port: int, *command: str) -> object:
        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return client.execute_command(*command)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def _ready(self) -> bool:
        for port in self.sentinel_ports:
            info = self._ask(port, "SENTINEL", "MASTER", MASTER_NAME)
            if not isinstance(info, dict):
                return False
            fields = {bytes(k): bytes(v) for k, v in info.items()}
            if fields.get(b"num-slaves") != b"2" or fields.get(b"num-other-sentinels") != b"2":
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers sees it."""
        for port in self.sentinel_ports:
            reply = self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            if isinstance(reply, list | tuple) and len(reply) == 2:
                return int(reply[1])
        return None

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port."""
        port = self.master_port()
        for server in self.servers:
            if server.port == port:
                server.kill()
        assert port is not None
        return port

    def stop(self) -> None:
        for proc in self.sentinels:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for server in self.servers:
            server.kill()
