"""A throw-away Kafka broker and Redis on any local address (tests and benchmarks that must not share the
stack on 9092/6379: other address, other lifetime). Same servers as ``enrich stack``; files under ``root``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from stack.errors import StackError
from stack.kafka import KafkaBroker
from stack.procs import free_port, wait_until
from stack.redis_server import RedisServer
from stack.topics import broker_ready


@dataclass(frozen=True, slots=True)
class PrivateStack:
    kafka_bootstrap: str
    redis_url: str


def _redis_ready(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def private_stack(
    root: Path, host: str = "127.0.0.1", *, kafka_lib: Path | None = None, timeout: float = 120.0
) -> Iterator[PrivateStack]:
    """Start a broker and a Redis listening on ``host`` (free ports), wait until both answer, stop both on
    exit. ``kafka_lib`` reuses already resolved broker jars (e.g. the local stack's ``<state>/kafka/lib``)."""
    broker = KafkaBroker(
        root / "kafka",
        port=free_port(host),
        controller_port=free_port(host),
        heap="512m",
        lib=kafka_lib,
        host=host,
    )
    server = RedisServer(root / "redis", port=free_port(host), host=host)
    url = f"redis://{host}:{server.port}/0"
    broker.install()
    try:
        server.start()
        broker.start()
        if not wait_until(lambda: _redis_ready(url), timeout):
            raise StackError(f"private Redis on {host}:{server.port} did not answer")
        if not wait_until(
            lambda: broker_ready(broker.bootstrap, timeout=1.0) or broker.process.pid() is None,
            timeout,
            interval=0.25,
        ) or not broker_ready(broker.bootstrap):
            raise StackError(f"private Kafka on {broker.bootstrap} did not start\n{broker.log_tail()}")
        yield PrivateStack(broker.bootstrap, url)
    finally:
        broker.process.stop()
        server.process.stop()
