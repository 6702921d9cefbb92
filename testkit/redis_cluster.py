"""A real local Redis Cluster for tests and benchmarks: `masters` masters and one replica each, on free loopback
ports, made by `redis-server --cluster-enabled yes` and `redis-cli --cluster create`. Every node runs in the
foreground as our child, is stopped by its PID, and takes its files (a temporary folder) with it.

`cluster-node-timeout` is short (1 s by default) so a killed master's replica is promoted within a few seconds.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def _free_ports(n: int) -> list[int]:
    """n free loopback ports whose cluster bus port (port + 10000) is free too."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 > 65535 or p in out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        out.append(p)
    return out


@dataclass
class Node:
    port: int
    proc: subprocess.Popen
    args: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)


@dataclass
class LocalCluster:
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    nodes: list[Node] = field(default_factory=list)
    dir: Path | None = None

    @property
    def url(self) -> str:
        """The cluster's URL as vigil takes it (VIGIL_REDIS_URL): any one node's address with the cluster scheme."""
        live = next(n for n in self.nodes if n.alive)
        return f"redis+cluster://127.0.0.1:{live.port}/0"

    def start(self, timeout_s: float = 30.0) -> "LocalCluster":
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if not binary or not cli:
            raise RuntimeError("redis-server and redis-cli are needed for a local Redis Cluster")
        self.dir = Path(tempfile.mkdtemp(prefix="vigil-cluster-"))
        ports = _free_ports(self.masters * (1 + self.replicas))
        try:
            for p in ports:
                d = self.dir / str(p)
                d.mkdir()
                args = [binary, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                        "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout",
                        str(self.node_timeout_ms), "--dir", str(d), "--save", "", "--appendonly", "no",
                        "--daemonize", "no", "--logfile", str(d / "redis.log"),
                        # a replica is promoted however long it was cut off (a test kills masters at will)
                        "--cluster-replica-validity-factor", "0"]
                self.nodes.append(Node(p, self._spawn(args), args))
            for n in self.nodes:
                self._wait(lambda n=n: n.client(socket_timeout=1).ping(), timeout_s, f"node {n.port} to answer")
            subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s)
            self.wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _spawn(args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restart(self, node: Node, timeout_s: float = 30.0) -> None:
        """Start a killed node again from its nodes.conf: it rejoins as a replica of whoever took its slots, so
        the cluster is whole (every master with a replica) for the tests that come after."""
        if node.alive:
            return
        node.proc = self._spawn(node.args)
        self._wait(lambda: node.client(socket_timeout=1).ping(), timeout_s, f"node {node.port} to answer again")
        self._wait(lambda: node.client(socket_timeout=1).info("replication")["role"] == "slave"
                   and node.client(socket_timeout=1).info("replication").get("master_link_status") == "up",
                   timeout_s, f"node {node.port} to rejoin as a replica")
        self.wait_ok(timeout_s)

    def _wait(self, fn, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if fn():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"local Redis Cluster: timed out waiting for {what}")
            time.sleep(0.05)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, every slot has a live master, and every live replica's
        link to its master is up (a WAIT right after start would otherwise find no replica)."""
        def ok() -> bool:
            for n in self.nodes:
                if not n.alive:
                    continue
                c = n.client(socket_timeout=1)
                if c.cluster("info")["cluster_state"] != "ok":
                    return False
                repl = c.info("replication")
                if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                    return False
            return len(self.master_ports()) >= self.masters
        self._wait(ok, timeout_s, "cluster_state:ok")

    def master_ports(self) -> set[int]:
        """Ports of the live masters that hold slots."""
        live = next(n for n in self.nodes if n.alive)
        out = set()
        for s in live.client(socket_timeout=1).cluster("slots"):
            out.add(int(s[2][1]))
        return {p for p in out if any(n.port == p and n.alive for n in self.nodes)}

    def master_of(self, key: str) -> Node:
        """The node serving `key`'s slot now."""
        live = next(n for n in self.nodes if n.alive)
        slot = int(live.client(socket_timeout=1).cluster("keyslot", key))
        for lo, hi, master, *_ in live.client(socket_timeout=1).cluster("slots"):
            if lo <= slot <= hi:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise RuntimeError(f"no master serves slot {slot}")

    def kill(self, node: Node) -> None:
        """SIGKILL: the node dies without a word (its replica is promoted after the node timeout)."""
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def flush(self) -> None:
        for port in self.master_ports():
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).flushall()

    def stop(self) -> None:
        for n in self.nodes:
            if n.alive:
                n.proc.terminate()
        for n in self.nodes:
            try:
                n.proc.wait(10)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait(5)
        self.nodes.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def available() -> bool:
    """Whether redis-server (with cluster support) and redis-cli are installed here."""
    return bool(shutil.which("redis-server") and shutil.which("redis-cli")) and os.name == "posix"
