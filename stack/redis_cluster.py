"""A Redis Cluster of three masters (Debian's ``redis-server``, cluster mode) under ``<state>/redis-cluster``.

``enrich stack up --redis-cluster`` starts it, ``enrich stack down`` stops it. Each node is a
``RedisServer`` with ``cluster-enabled yes`` (AOF on, like the single instance) in ``node-<i>/``. The ports
are picked free on the first start and kept in ``ports`` (a node's ``nodes.conf`` names its peers by
port, so a restart must reuse them). The first start assigns the 16384 slots in three even ranges
(``CLUSTER ADDSLOTSRANGE``) and joins the nodes (``CLUSTER MEET``); later starts find the cluster formed
already. Ready means every node reports ``cluster_state:ok`` and knows all three masters.

Clients reach it through ``redis+cluster://host:port`` (any node; see ``stores/redis_client.py``), which
``url`` gives and ``<root>/url`` records for scripts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import redis

from stack.errors import StackError
from stack.procs import free_port, wait_until
from stack.redis_server import RedisServer

SLOTS = 16384
CLUSTER_CONFIG = "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 5000\n"


def _node_config(bus_port: int) -> str:
    # the cluster bus gets a free port of its own (the default, port + 10000, may be taken or too high)
    return f"{CLUSTER_CONFIG}cluster-port {bus_port}\n"


class RedisClusterStack:
    def __init__(self, root: Path, *, masters: int = 3, host: str = "127.0.0.1") -> None:
        self.root = root.resolve()
        self.host = host
        self.masters = masters
        self.pairs = pairs = self._ports()
        self.ports = [port for port, _bus in pairs]
        self.nodes = [
            RedisServer(self.root / f"node-{i}", port=port, host=host, extra_config=_node_config(bus))
            for i, (port, bus) in enumerate(pairs)
        ]

    def _ports(self) -> list[tuple[int, int]]:
        """(client port, bus port) per node: the saved ones, or free ones on the first start."""
        saved = self.root / "ports"
        if saved.exists():
            return [(int(a), int(b)) for a, b in (p.split(":") for p in saved.read_text().split())]
        picked: set[int] = set()
        while len(picked) < 2 * self.masters:
            picked.add(free_port(self.host))
        ports = sorted(picked)
        return [(ports[2 * i], ports[2 * i + 1]) for i in range(self.masters)]

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.host}:{self.ports[0]}"

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(self.host, port, socket_connect_timeout=1, socket_timeout=2)

    def _info(self, port: int) -> dict[str, str]:
        client = self._client(port)
        try:
            raw = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        except redis.RedisError:
            return {}
        finally:
            client.close()
        if isinstance(raw, dict):  # redis-py parses CLUSTER INFO already
            return {str(k): str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def ready(self) -> bool:
        """Every node answers, reports ``cluster_state:ok`` and knows every master."""
        for port in self.ports:
            info = self._info(port)
            if info.get("cluster_state") != "ok" or int(info.get("cluster_size", 0)) != self.masters:
                return False
        return True

    def running(self) -> list[int | None]:
        return [node.process.pid() for node in self.nodes]

    def start(self, timeout: float = 60.0) -> bool:
        """Start the nodes that are not running, form the cluster on first start, wait until it is ready.
        Returns True when something was started."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "ports").write_text(" ".join(f"{p}:{b}" for p, b in self.pairs) + "\n")
        started = [node.start() for node in self.nodes]
        if not wait_until(lambda: all(self._info(p) for p in self.ports), timeout):
            raise StackError(f"Redis Cluster nodes on ports {self.ports} did not answer")
        if not any(int(self._info(p).get("cluster_slots_assigned", 0)) for p in self.ports):
            self._form()
        if not wait_until(self.ready, timeout, interval=0.2):
            raise StackError(f"Redis Cluster on ports {self.ports} did not reach cluster_state:ok")
        (self.root / "url").write_text(self.url + "\n")
        return any(started)

    def _form(self) -> None:
        share = SLOTS // self.masters
        for i, port in enumerate(self.ports):
            first = i * share
            last = SLOTS - 1 if i == self.masters - 1 else first + share - 1
            client = self._client(port)
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)  # type: ignore[no-untyped-call]
                for other, bus in self.pairs:
                    if other != port:
                        client.execute_command(  # type: ignore[no-untyped-call]
                            "CLUSTER", "MEET", self.host, other, bus
                        )
            finally:
                client.close()

    def stop(self) -> bool:
        """Stop the nodes this stack started. True when something was stopped."""
        return any([node.process.stop() for node in self.nodes])


@contextlib.contextmanager
def private_cluster(root: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """A throw-away three-master cluster under ``root`` (tests); yields its ``redis+cluster://`` URL."""
    cluster = RedisClusterStack(root, host=host)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()
