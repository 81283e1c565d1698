"""Create the engine's topics with the configured partition counts and configs (idempotent)."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from enrich.settings import Settings
from stack.errors import StackError


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the engine: telemetry, the compacted CDC topics, and the output/dead-letter topics."""
    specs = [TopicSpec(settings.topic_telemetry, settings.telemetry_partitions)]
    specs += [TopicSpec(t, settings.cdc_partitions, dict(COMPACTED)) for t in settings.cdc_topics.values()]
    specs += [
        TopicSpec(settings.topic_enriched, settings.stream_partitions),
        TopicSpec(settings.topic_outliers, settings.stream_partitions),
        TopicSpec(
            settings.topic_dlq, settings.stream_partitions, {"retention.ms": str(14 * 24 * 3600 * 1000)}
        ),
    ]
    return specs


def create_topics(bootstrap: str, specs: list[TopicSpec], timeout: float = 30.0) -> dict[str, str]:
    """Create missing topics. Returns {topic: "created" | "exists"}. Raises StackError on other failures."""
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
    return outcome


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
