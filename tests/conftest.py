"""Service fixtures. Integration tests take Kafka/Redis addresses from the environment
(``ENRICH_KAFKA_BOOTSTRAP`` / ``ENRICH_REDIS_URL``); where they are unset and a Docker engine answers,
testcontainers starts them; otherwise the tests skip with the reason — unless ``ENRICH_REQUIRE_SERVICES=1``
(set by CI and scripts/test), which turns a missing service into a failure so nothing is skipped silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enrich.settings import Settings


def _docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


def _missing(what: str) -> None:
    reason = (
        f"{what} not configured (set ENRICH_KAFKA_BOOTSTRAP / ENRICH_REDIS_URL, "
        "e.g. after `enrich stack up`) "
        "and no Docker engine answers for testcontainers"
    )
    if os.environ.get("ENRICH_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    env = os.environ.get("ENRICH_KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    if not _docker_available():
        _missing("Kafka")
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
        yield container.get_bootstrap_server()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    env = os.environ.get("ENRICH_REDIS_URL")
    if env:
        yield env
        return
    if not _docker_available():
        _missing("Redis")
    from testcontainers.redis import RedisContainer

    with RedisContainer("redis:7-alpine").with_command("redis-server --appendonly yes") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster (three masters) as a ``redis+cluster://host:port`` URL: ``ENRICH_REDIS_CLUSTER_URL``
    when set, else a private cluster of Debian's redis-server started for this session (and stopped at
    its end) with the stack's code (``stack.redis_cluster``)."""
    env = os.environ.get("ENRICH_REDIS_CLUSTER_URL")
    if env:
        yield env
        return
    from stack.redis_cluster import private_cluster
    from stack.redis_server import find_redis_server

    if find_redis_server() is None:
        _missing("Redis Cluster (redis-server)")
    with private_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture(params=["single", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of a single Redis instance, then of a Redis Cluster (a test runs against both)."""
    if request.param == "single":
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("redis_cluster_url"))


def sync_client(url: str) -> Any:
    """A plain redis-py client (cluster client for a ``redis+cluster://`` URL), no retry policy."""
    import redis

    from stores.redis_client import cluster_url

    plain = cluster_url(url)
    return redis.RedisCluster.from_url(plain) if plain else redis.Redis.from_url(url)


def async_client(url: str) -> Any:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    from stores.redis_client import cluster_url

    plain = cluster_url(url)
    return RedisCluster.from_url(plain) if plain else aioredis.Redis.from_url(url)


def delete_prefix(client: Any, prefix: str) -> None:
    """Delete a test's keys (every node of a cluster)."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for key in keys:
        client.delete(key)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names per test (topics, key prefixes), so tests never see each other's data."""
    token = uuid.uuid4().hex[:8]
    return lambda name: f"t{token}.{name}"


@pytest.fixture
def isolated_settings(
    kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str], tmp_path: Path
) -> Settings:
    """Settings whose topics, Redis key prefixes and history directory are this test's own (create the
    topics with stack.topics.create_topics, or take ``pipeline_settings``)."""
    return settings_for_test(kafka_bootstrap, redis_url, unique("")[:-1], tmp_path)


def settings_for_test(
    kafka_bootstrap: str, redis_url: str, token: str, tmp: Path, **more: object
) -> Settings:
    """Settings whose topics (``<token>.*``), Redis key prefixes (``<token>:*``) and directories (history,
    state: recovery, worker registrations) are a test's own, on the given services."""
    fields: dict[str, object] = {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topic_telemetry": f"{token}.telemetry",
        "topic_cdc_prefix": f"{token}.cdc.",
        "topic_enriched": f"{token}.enriched",
        "topic_outliers": f"{token}.outliers",
        "topic_dlq": f"{token}.dlq",
        "telemetry_partitions": 2,
        "cdc_partitions": 1,
        "stream_partitions": 2,
        "snapshot_prefix": f"{token}:snap:",
        "state_prefix": f"{token}:state:",
        "alerts_prefix": f"{token}:alerts:",
        "api_prefix": f"{token}:api:",
        "history_dir": tmp / "history",
        "state_dir": tmp / "state",  # workers started by the test register there (<state>/workers/)
        **more,
    }
    return Settings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def pipeline_settings(isolated_settings: Settings) -> Settings:
    """``isolated_settings`` with its topics created."""
    from stack.topics import create_topics, topic_specs

    create_topics(isolated_settings.kafka_bootstrap, topic_specs(isolated_settings))
    return isolated_settings
