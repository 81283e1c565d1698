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
def redis_cluster_url() -> str:
    """A Redis Cluster for the cluster variants of store tests: ``ENRICH_REDIS_CLUSTER_URL`` (any node's
    URL); they skip where none is given (`enrich stack up --redis-cluster` provides one)."""
    url = os.environ.get("ENRICH_REDIS_CLUSTER_URL")
    if not url:
        pytest.skip("no Redis Cluster (ENRICH_REDIS_CLUSTER_URL unset)")
    return url


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
    """Settings whose topics (``<token>.*``), Redis key prefixes (``<token>:*``) and directories are a test's
    own, on the given services."""
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
        **more,
    }
    return Settings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def pipeline_settings(isolated_settings: Settings) -> Settings:
    """``isolated_settings`` with its topics created."""
    from stack.topics import create_topics, topic_specs

    create_topics(isolated_settings.kafka_bootstrap, topic_specs(isolated_settings))
    return isolated_settings
