"""``enrich demo``: run the whole pipeline on the local stack with the fleet simulator and show it working."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition
from rich.console import Console
from rich.table import Table

from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from simulator.scenarios import SCENARIOS


def topic_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Messages currently in each topic (high minus low watermark, summed over partitions)."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"demo-{uuid.uuid4().hex}"}
    )
    try:
        out: dict[str, int] = {}
        md = consumer.list_topics(timeout=10)
        for topic in topics:
            total = 0
            for p in md.topics[topic].partitions if topic in md.topics else {}:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                total += high - low
            out[topic] = total
        return out
    finally:
        consumer.close()


def latest_message(settings: Settings, topic: str) -> bytes | None:
    """The newest message of partition 0 of ``topic``."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"demo-{uuid.uuid4().hex}",
            "log_level": 0,
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, 0, high - 1)])
        for _ in range(20):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                value: bytes | None = msg.value()
                return value
            err = msg.error() if msg is not None else None
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                return None
        return None
    finally:
        consumer.close()


def run_demo(settings: Settings, console: Console, *, vehicles: int, rate: float, duration: float) -> None:
    topics = [settings.topic_telemetry, *settings.cdc_topics.values(), settings.topic_enriched]
    before = topic_counts(settings, topics)
    truth = Path(settings.state_dir) / "demo-ground-truth.json"
    config = SimConfig(
        vehicles=vehicles,
        rate=rate,
        duration=duration,
        scenarios=list(SCENARIOS),
        ground_truth=truth,
    )
    sim = Simulation(config, settings)
    console.rule("fleet simulator")
    console.print(
        f"{vehicles} cars, {len(sim.fleet.devices)} devices, "
        f"{len(sim.injections)} injected outliers/controls; "
        f"{rate:,.0f} events/s for {duration:.0f}s, event time x{sim.time_scale:.0f}"
    )
    report = sim.run(lambda sent, r: console.print(f"  {sent:>8} events  {r:>9,.0f}/s", highlight=False))
    console.print(
        f"sent {report.events:,} telemetry events ({report.rate_achieved:,.0f}/s) "
        f"and {report.cdc_messages:,} CDC messages ({config.cdc_format})"
    )
    after = topic_counts(settings, topics)
    table = Table("topic", "messages added", "total")
    for topic in topics:
        table.add_row(topic, f"{after[topic] - before.get(topic, 0):,}", f"{after[topic]:,}")
    console.rule("data in Kafka")
    console.print(table)
    sample = latest_message(settings, settings.topic_telemetry)
    if sample is not None:
        console.rule(f"latest telemetry event ({settings.topic_telemetry}, partition 0)")
        console.print_json(sample.decode())
    doc = orjson.loads(truth.read_bytes())
    kinds = Counter((i["scenario"], "control" if i["control"] else "incident") for i in doc["incidents"])
    console.rule(f"ground truth ({truth})")
    for (scenario, kind), n in sorted(kinds.items()):
        console.print(f"  {scenario:<20} {kind:<9} {n}")
