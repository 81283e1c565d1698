"""What a run of the enrichment flow left behind, read as a user would (Kafka topics, Redis keys, Parquet),
minus the processing-time fields — so runs with different process counts or layouts can be compared."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from enrich.settings import Settings
from stores.parquet_history import read_history
from tests.integration.pipeline import vehicle_states

# Fields that say when or how often something was processed, not what: they differ between any two runs.
# Enriched events have none (processing time is the record's Kafka timestamp, retries a header).
EVENT_PROCESSING_FIELDS: tuple[str, ...] = ()
STATE_PROCESSING_FIELDS = ("updated_at", "version")


@dataclass(frozen=True, slots=True)
class RunOutput:
    enriched: dict[str, tuple[bytes | None, dict[str, Any]]]  # event_id -> (Kafka key, event)
    enriched_messages: int  # including redeliveries (bytewax output is at-least-once)
    states: dict[int, dict[str, Any]]
    incidents: frozenset[tuple[str, str]]  # (incident_id, status)
    outliers: dict[tuple[str, str], dict[str, Any]]  # the outlier events, for messages
    history_rows: Counter[str]  # event_id -> rows in the Parquet history of enriched events


def _without(doc: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in fields}


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Message]:
    """Every record of ``topic`` up to its end now (the runs that wrote it have exited)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"outputs-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})  # fmt: skip
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0])
        pending = {p for p, end in ends.items() if end > 0}
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for m in consumer.consume(10_000, 0.5):
                if m.error() is not None:
                    continue
                out.append(m)
                if (m.offset() or 0) + 1 >= ends[m.partition() or 0]:
                    pending.discard(m.partition() or 0)
        assert not pending, f"{topic}: partitions {sorted(pending)} not read to their end in {timeout:.0f}s"
        return out
    finally:
        consumer.close()


def collect(settings: Settings, events: int) -> RunOutput:
    """Read everything a run wrote (its workers have exited); at-least-once redeliveries included."""
    enriched: dict[str, tuple[bytes | None, dict[str, Any]]] = {}
    messages = read_topic(settings.kafka_bootstrap, settings.topic_enriched)
    assert len(messages) >= events, f"{len(messages)} enriched records for {events} events"
    for m in messages:
        doc = orjson.loads(m.value() or b"")
        enriched[doc["event_id"]] = (m.key(), _without(doc, EVENT_PROCESSING_FIELDS))
    outliers = [
        orjson.loads(m.value() or b"") for m in read_topic(settings.kafka_bootstrap, settings.topic_outliers)
    ]
    states = {car: _without(st, STATE_PROCESSING_FIELDS) for car, st in vehicle_states(settings).items()}
    assert settings.history_dir is not None
    history = read_history(settings.history_dir, "enriched").column("event_id").to_pylist()
    return RunOutput(
        enriched,
        len(messages),
        states,
        frozenset((o["incident_id"], o["status"]) for o in outliers),
        {(o["incident_id"], o["status"]): o for o in outliers},
        Counter(history),
    )


def assert_same_output(actual: RunOutput, reference: RunOutput) -> None:
    """Same enriched events (by event_id and content), same incidents (ids and status), every event once in
    the Parquet history, same vehicle states."""
    missing = reference.enriched.keys() - actual.enriched.keys()
    extra = actual.enriched.keys() - reference.enriched.keys()
    assert not missing and not extra, (
        f"{len(missing)} events missing (e.g. {sorted(missing)[:3]}), {len(extra)} extra"
    )
    differ = [e for e, v in reference.enriched.items() if actual.enriched[e] != v]
    assert not differ, (
        f"{len(differ)} enriched events differ, e.g. {differ[0]}: "
        f"{actual.enriched[differ[0]]} != {reference.enriched[differ[0]]}"
    )

    def show(run: RunOutput, keys: frozenset[tuple[str, str]]) -> list[str]:
        fields = ("incident_id", "status", "rule_id", "car_id", "device_id", "starts_at", "ends_at")
        return [str({f: run.outliers[k].get(f) for f in fields}) for k in sorted(keys)]

    assert actual.incidents == reference.incidents, (
        f"incidents only here: {show(actual, actual.incidents - reference.incidents)}; "
        f"only in the reference: {show(reference, reference.incidents - actual.incidents)}"
    )
    assert set(actual.history_rows) == set(reference.enriched), "the Parquet history misses or adds events"
    doubled = [e for e, n in actual.history_rows.items() if n > 1]
    assert not doubled, f"{len(doubled)} events have more than one Parquet history row, e.g. {doubled[:3]}"
    assert actual.states.keys() == reference.states.keys()
    differ_cars = [c for c, st in reference.states.items() if actual.states[c] != st]
    assert not differ_cars, f"{len(differ_cars)} vehicle states differ, e.g. car {differ_cars[0]}: " \
        f"{actual.states[differ_cars[0]]} != {reference.states[differ_cars[0]]}"  # fmt: skip
