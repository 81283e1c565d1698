"""Readiness of the API's dependencies (``GET /readyz``): Redis answers PING and Kafka answers a metadata
request, each within ``PROBE_TIMEOUT_S``; both probes run concurrently, so the answer comes within that time.

``/healthz`` says the process serves (and whether Redis answers); ``/readyz`` answers 503 with the names of
the dependencies that are down, for load balancers and orchestrators to hold traffic back meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from connectors.health import monitor
from connectors.kafka_config import QUIET_LOG_LEVEL
from enrich.settings import Settings

PROBE_TIMEOUT_S = 2.0


def kafka_admin(settings: Settings) -> AdminClient:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "log_level": QUIET_LOG_LEVEL,
        "socket.timeout.ms": int(PROBE_TIMEOUT_S * 1000),
        "error_cb": lambda _e: None,
    }
    return AdminClient(conf)


async def redis_ready(client: aioredis.Redis) -> bool:
    try:
        return bool(await asyncio.wait_for(client.ping(), PROBE_TIMEOUT_S))
    except (aioredis.RedisError, OSError, TimeoutError):
        return False


def _kafka_ready(admin: AdminClient) -> bool:
    try:
        return bool(admin.list_topics(timeout=PROBE_TIMEOUT_S).brokers)
    except KafkaException:
        return False


async def readiness(client: aioredis.Redis, admin: AdminClient) -> dict[str, Any]:
    """``{"ready", "redis", "kafka", "down": [...]}``; also feeds the dependency gauges of this process."""
    up_redis, up_kafka = await asyncio.gather(redis_ready(client), asyncio.to_thread(_kafka_ready, admin))
    for name, up in (("redis", up_redis), ("kafka", up_kafka)):
        if up:
            monitor(name).recovered()  # type: ignore[arg-type]
        else:
            monitor(name).failure("readiness probe failed", what="API readiness")  # type: ignore[arg-type]
    down = [name for name, up in (("redis", up_redis), ("kafka", up_kafka)) if not up]
    return {"ready": not down, "redis": up_redis, "kafka": up_kafka, "down": down}
