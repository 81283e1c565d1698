"""The foundation on real services: a produce/consume round trip, the topic layout, Redis durability."""

from __future__ import annotations

import pytest
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from enrich.settings import Settings
from stack.topics import create_topics, topic_specs
from tests.kafka_util import consume_all

pytestmark = pytest.mark.integration


def test_produce_consume_round_trip(isolated_settings: Settings) -> None:
    s = isolated_settings
    create_topics(s.kafka_bootstrap, topic_specs(s))
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "enable.idempotence": True})
    sent = {f"dev-{i}".encode(): f'{{"n":{i}}}'.encode() for i in range(500)}
    for key, value in sent.items():
        producer.produce(s.topic_telemetry, value, key)
    assert producer.flush(30) == 0
    got = consume_all(s.kafka_bootstrap, [s.topic_telemetry], expected=len(sent))
    assert {m.key(): m.value() for m in got} == sent
    # Same key → same partition, in order: per-device order is what the flows rely on.
    partitions = {m.key(): m.partition() for m in got}
    assert len(set(partitions.values())) == s.telemetry_partitions


def test_topics_have_configured_partitions_and_cdc_is_compacted(isolated_settings: Settings) -> None:
    s = isolated_settings
    first = create_topics(s.kafka_bootstrap, topic_specs(s))
    assert set(first.values()) == {"created"}
    again = create_topics(s.kafka_bootstrap, topic_specs(s))
    assert set(again.values()) == {"exists"}  # idempotent
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    md = admin.list_topics(timeout=10)
    assert len(md.topics[s.topic_telemetry].partitions) == s.telemetry_partitions
    resources = [
        ConfigResource(ConfigResource.Type.TOPIC, t) for t in [*s.cdc_topics.values(), s.topic_telemetry]
    ]
    configs = {r.name: f.result(timeout=10) for r, f in admin.describe_configs(resources).items()}
    for topic in s.cdc_topics.values():
        assert configs[topic]["cleanup.policy"].value == "compact"
        assert len(md.topics[topic].partitions) == s.cdc_partitions
    assert configs[s.topic_telemetry]["cleanup.policy"].value == "delete"
    assert s.topic_dlq in md.topics


def test_redis_answers_with_append_only_file_on(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    client.set("enrich:test:probe", b"1", ex=10)
    assert client.get("enrich:test:probe") == b"1"
