"""``enrich stack up | down | status``: the native local stack (Kafka + Redis) on loopback."""

from __future__ import annotations

import time
from dataclasses import dataclass

from enrich.settings import Settings
from stack.errors import StackError
from stack.kafka import KafkaBroker
from stack.procs import wait_until
from stack.redis_cluster import RedisClusterStack
from stack.redis_server import RedisServer, redis_answers
from stack.topics import broker_ready, create_topics, topic_specs


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    name: str
    pid: int | None
    ready: bool
    address: str


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        root = settings.state_dir.resolve()
        self.kafka = KafkaBroker(
            root / "kafka",
            port=settings.kafka_port,
            controller_port=settings.kafka_controller_port,
            heap=settings.kafka_heap,
            lib=settings.kafka_lib_dir,
            max_message_bytes=settings.kafka_max_message_bytes,
        )
        self.redis = RedisServer(root / "redis", port=settings.redis_port)
        self.cluster_root = root / "redis-cluster"

    def redis_cluster(self) -> RedisClusterStack:
        """The optional three-master Redis Cluster (``stack up --redis-cluster``) under the state dir."""
        return RedisClusterStack(self.cluster_root)

    def redis_ready(self) -> bool:
        return redis_answers(self.settings.redis_url)

    def up(
        self, *, timeout: float = 120.0, log: bool = True, redis_cluster: bool = False
    ) -> dict[str, float]:
        """Install what is missing, start what is not running, wait until ready, create topics; with
        ``redis_cluster`` also the three-master Redis Cluster (its URL: ``redis_cluster().url``).

        Returns the seconds spent per step. Idempotent: running components are left alone.
        """
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        self.kafka.install()
        timings["install"] = time.monotonic() - t0
        t1 = time.monotonic()
        # A server that already answers on the configured address (started elsewhere) is used, not doubled.
        if self.redis.process.pid() is not None or not self.redis_ready():
            self.redis.start()
        if self.kafka.process.pid() is not None or not broker_ready(
            self.settings.kafka_bootstrap, timeout=1.0
        ):
            self.kafka.start()
        if redis_cluster:
            self.redis_cluster().start(timeout)
        if not wait_until(self.redis_ready, timeout):
            raise StackError(f"Redis did not answer PING on {self.settings.redis_url} within {timeout:.0f}s")
        if not wait_until(self._kafka_ready_or_dead, timeout, interval=0.25):
            raise StackError(f"Kafka did not answer metadata within {timeout:.0f}s\n{self.kafka.log_tail()}")
        if not broker_ready(self.settings.kafka_bootstrap):
            raise StackError(f"Kafka exited during start-up\n{self.kafka.log_tail()}")
        timings["start"] = time.monotonic() - t1
        t2 = time.monotonic()
        create_topics(self.settings.kafka_bootstrap, topic_specs(self.settings))
        timings["topics"] = time.monotonic() - t2
        timings["total"] = time.monotonic() - t0
        return timings

    def _kafka_ready_or_dead(self) -> bool:
        if broker_ready(self.settings.kafka_bootstrap):
            return True
        return self.kafka.process.pid() is None  # ours exited: stop waiting, up() reports it

    def down(self) -> list[str]:
        """Stop the processes this stack started (pid files). Returns the names stopped."""
        stopped = []
        for name, proc in (("kafka", self.kafka.process), ("redis", self.redis.process)):
            if proc.stop():
                stopped.append(name)
        if self.cluster_root.exists() and self.redis_cluster().stop():
            stopped.append("redis-cluster")
        return stopped

    def status(self) -> list[ComponentStatus]:
        kpid = self.kafka.process.pid()
        rpid = self.redis.process.pid()
        return [
            ComponentStatus(
                "kafka",
                kpid,
                broker_ready(self.settings.kafka_bootstrap, timeout=1.0),
                self.settings.kafka_bootstrap,
            ),
            ComponentStatus("redis", rpid, self.redis_ready(), self.settings.redis_url),
            *self._cluster_status(),
        ]

    def _cluster_status(self) -> list[ComponentStatus]:
        if not (self.cluster_root / "ports").exists():
            return []  # never started: not part of this stack
        cluster = self.redis_cluster()
        pids = cluster.running()
        return [ComponentStatus("redis-cluster", pids[0], all(pids) and cluster.ready(), cluster.url)]
