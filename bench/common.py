"""Shared helpers of the benchmarks: isolated topics, producing, and a results line."""

from __future__ import annotations

import os
import uuid

from connectors.kafka_writer import KafkaWriter
from enrich.settings import Settings
from stack.topics import create_topics, topic_specs


def bench_settings(**overrides: object) -> Settings:
    """Settings with topics and key prefixes unique to this run (created on the broker)."""
    token = f"b{uuid.uuid4().hex[:6]}"
    base = Settings()
    s = base.model_copy(
        update={
            "topic_telemetry": f"{token}.telemetry",
            "topic_cdc_prefix": f"{token}.cdc.",
            "topic_enriched": f"{token}.enriched",
            "topic_outliers": f"{token}.outliers",
            "topic_dlq": f"{token}.dlq",
            "snapshot_prefix": f"{token}:snap:",
            "state_dir": base.state_dir,
            **overrides,
        }
    )
    create_topics(s.kafka_bootstrap, topic_specs(s))
    return s


def produce_all(bootstrap: str, messages: list[tuple[str, bytes | None, bytes | None]]) -> None:
    writer = KafkaWriter(bootstrap, stage="bench.produce", config={"linger.ms": 10})
    for topic, key, value in messages:
        writer.send_to(topic, key, value)
    writer.flush()
    if writer.rejected:
        raise RuntimeError(f"{writer.rejected} messages refused by the broker")


def env_for(s: Settings) -> dict[str, str]:
    """The environment of a worker subprocess configured like ``s`` (metrics off)."""
    return {**os.environ, **s.as_env(), "ENRICH_METRICS_PORT": "0"}
