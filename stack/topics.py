"""Create the engine's topics with the configured partition counts and configs (idempotent)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from connectors.kafka_config import topic_size_config
from enrich.settings import Settings
from stack.errors import StackError


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the engine: telemetry, the compacted CDC topics, and the output/dead-letter topics.

    Every topic accepts records up to ``ENRICH_KAFKA_MAX_MESSAGE_BYTES`` (``max.message.bytes``), the same
    limit the producers and consumers are configured with (connectors/kafka_config.py)."""
    size = topic_size_config(settings.kafka_max_message_bytes)
    specs = [TopicSpec(settings.topic_telemetry, settings.telemetry_partitions, dict(size))]
    specs += [
        TopicSpec(t, settings.cdc_partitions, {**COMPACTED, **size}) for t in settings.cdc_topics.values()
    ]
    specs += [
        TopicSpec(settings.topic_enriched, settings.stream_partitions, dict(size)),
        TopicSpec(settings.topic_outliers, settings.stream_partitions, dict(size)),
        TopicSpec(
            settings.topic_dlq,
            settings.stream_partitions,
            {"retention.ms": str(14 * 24 * 3600 * 1000), **size},
        ),
    ]
    return specs


def create_topics(bootstrap: str, specs: list[TopicSpec], timeout: float = 30.0) -> dict[str, str]:
    """Create missing topics. Returns {topic: "created" | "exists"}. Raises StackError on other failures.

    A topic named twice is created once (librdkafka would crash the process on a duplicate name)."""
    by_name: dict[str, TopicSpec] = {}
    for spec in specs:
        if by_name.setdefault(spec.name, spec) != spec:
            raise StackError(
                f"topic {spec.name} is specified twice, differently: {by_name[spec.name]} / {spec}"
            )
    specs = list(by_name.values())
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config) for s in specs],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    outcome: dict[str, str] = {}
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            outcome[name] = "created"
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                outcome[name] = "exists"
            else:
                raise StackError(f"creating topic {name} failed: {exc}") from exc
    wait_for_leaders(admin, [s.name for s in specs], timeout)
    wait_for_offsets(bootstrap, [s.name for s in specs], timeout)
    return outcome


def wait_for_offsets(bootstrap: str, topics: list[str], timeout: float) -> None:
    """Block until every partition of ``topics`` answers an offsets request (leaders load new partitions
    a little after the metadata names them)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "enrich-topics-probe", "log_level": 0})
    deadline = time.monotonic() + timeout
    try:
        md = consumer.list_topics(timeout=timeout)
        for topic in topics:
            for p in md.topics[topic].partitions:
                while True:
                    try:
                        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                        break
                    except KafkaException:
                        if time.monotonic() > deadline:
                            raise StackError(f"{topic}[{p}] answers no offsets request") from None
                        time.sleep(0.1)
    finally:
        consumer.close()


def wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float) -> None:
    """Block until every partition of ``topics`` has a leader (a new topic is not usable before)."""
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=timeout)
        pending = [
            t
            for t in topics
            if t not in md.topics
            or md.topics[t].error is not None
            or any(p.leader < 0 for p in md.topics[t].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise StackError(f"topics without a leader after {timeout:.0f}s: {', '.join(pending)}")
        time.sleep(0.1)


def broker_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the broker answers a metadata request."""
    admin = AdminClient(
        {"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000), "log_level": 0}
    )
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(md.brokers)
