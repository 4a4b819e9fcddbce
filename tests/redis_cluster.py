"""A real Redis Cluster for tests: three masters, each with one replica, on loopback.

``redis-server --cluster-enabled yes`` runs six times on free ports (their
cluster buses on free ports too, ``--cluster-port``), each with its files in
a temporary directory, and ``redis-cli --cluster create … --cluster-replicas
1 --cluster-yes`` joins them.  Free ports, not fixed ones, so that parallel
test runs (pytest-xdist workers, other checkouts) never meet: each node
announces the port it listens on.  ``cluster-node-timeout`` is short (2 s; 1 s
made busy nodes on a loaded 2-core machine mark each other failed) so a killed
master is replaced by its replica within a few seconds;
``cluster-replica-validity-factor 0`` lets a replica take over however long
ago it last heard from its master, and ``repl-diskless-sync-delay 0`` makes
the first sync immediate.  A cluster with ``tls`` listens for TLS only, its
bus too (``tls-cluster yes``).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import redis

from .faults.harness import free_port
from .integration.processes import wait_for
from .tls import RedisTls

MASTERS = 3
NODE_TIMEOUT_MS = 2000


class RedisCluster:
    """``redis-server`` processes (six by default) joined into one cluster this run owns."""

    def __init__(self, directory: Path, masters: int = MASTERS, replicas: int = 1,
                 tls: RedisTls | None = None) -> None:
        self.directory = directory
        count = masters * (1 + replicas)
        self.tls = tls
        self.ports = [free_port() for _ in range(count)]
        self.bus_ports = {port: free_port() for port in self.ports}
        self.masters_count = masters
        self.replicas = replicas
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _client(self, port: int) -> redis.Redis:
        tls = self.tls.client_kwargs() if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1,
                           socket_connect_timeout=1, **tls)

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{port}" for port in self.ports[:self.masters_count])
        return f"redis+cluster://{nodes}/0"

    def start(self) -> None:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            wait_for(lambda p=port: self._answers(p), 15, f"cluster node {port}")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        tls = self.tls.cli_args() if self.tls else []
        subprocess.run(["redis-cli", *tls, "--cluster", "create", *nodes, "--cluster-replicas",
                        str(self.replicas), "--cluster-yes"], check=True,
                       capture_output=True, timeout=60)
        wait_for(self.healthy, 30, "the cluster to agree on every slot and its replicas")

    def _start_node(self, port: int) -> None:
        directory = self.directory / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        log = open(directory / "redis.log", "ab")  # noqa: SIM115
        listen = ([*self.tls.server_args(port), "--tls-cluster", "yes"] if self.tls
                  else ["--port", str(port)])
        self.procs[port] = subprocess.Popen(
            ["redis-server", *listen, "--cluster-port", str(self.bus_ports[port]),
             "--bind", "127.0.0.1",
             "--protected-mode", "no", "--dir", str(directory), "--save", "",
             "--appendonly", "no", "--cluster-enabled", "yes",
             "--cluster-config-file", str(directory / "nodes.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _answers(self, port: int) -> bool:
        client = self._client(port)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _info(self, port: int, section: str) -> dict[str, str]:
        client = self._client(port)
        try:
            raw = client.execute_command(section, NEVER_DECODE=True)
        except redis.RedisError:
            return {}
        finally:
            client.close()
        if isinstance(raw, dict):  # redis-py parses CLUSTER INFO itself
            return {_text(key): _text(value) for key, value in raw.items()}
        text = _text(raw)
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {key: value.strip() for key, value in pairs}

    def healthy(self) -> bool:
        """Every live node sees all slots served and every master has its replicas."""
        live = [port for port, proc in self.procs.items() if proc.poll() is None]
        for port in live:
            if self._info(port, "CLUSTER INFO").get("cluster_state") != "ok":
                return False
        replication = {port: self._info(port, "INFO replication") for port in live}
        for info in replication.values():
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return all(int(info.get("connected_slaves", "0")) >= self.replicas
                   for info in replication.values() if info.get("role") == "master")

    def _role(self, port: int) -> str:
        return self._info(port, "INFO replication").get("role", "")

    def master_of(self, slot: int) -> int:
        """The port of the master that a live node says owns ``slot``."""
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            client = self._client(port)
            try:
                ranges = client.execute_command("CLUSTER SLOTS", NEVER_DECODE=True)
            except redis.RedisError:
                continue
            finally:
                client.close()
            for start, end, master, *_ in ranges:
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise AssertionError(f"no live node knows slot {slot}")

    def masters(self) -> list[int]:
        return [port for port, proc in self.procs.items()
                if proc.poll() is None and self._role(port) == "master"]

    def flush(self) -> None:
        """Empty every master (replicas follow)."""
        for port in self.masters():
            client = self._client(port)
            try:
                client.flushall()
            finally:
                client.close()

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, connections cut mid-command."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins (its ``nodes.conf`` remembers the
        cluster), as a replica of whoever took its slots; wait until all is healthy."""
        self._start_node(port)
        wait_for(self.healthy, 30, f"node {port} to rejoin and every master to have a replica")

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)



def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
