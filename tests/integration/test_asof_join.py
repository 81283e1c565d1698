"""Joins as of event time through the real flows: events at t1 < change < t2 around a reservation change
and a device swap get the rows valid at t1 and t2 — also when t1's event comes after the change — and a
replay from the beginning gives byte-identical enriched events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.kafka_writer import KafkaWriter
from enrich.settings import Settings
from simulator.cdc import CdcEncoder
from tests.integration.pipeline import run_to_eof
from tests.kafka_util import consume_all

pytestmark = pytest.mark.integration


def telemetry(device: str, seq: int, ts: int) -> bytes:
    return orjson.dumps({"device_id": device, "ts": ts, "seq": seq, "signals": {"Vehicle.Speed": float(seq)}})


def enriched_bytes(s: Settings, expected: int) -> dict[str, bytes]:
    messages = consume_all(s.kafka_bootstrap, [s.topic_enriched], expected=expected)
    return {orjson.loads(m.value() or b"")["event_id"]: m.value() or b"" for m in messages}


def test_events_join_the_rows_of_their_time_and_a_replay_gives_the_same_bytes(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    s = pipeline_settings
    t = int(time.time() * 1000) - 600_000  # ten minutes ago: 10:00
    minute = 60_000
    enc = CdcEncoder("debezium")
    r1 = {"reservation_id": 1, "car_id": 7, "customer_email": "ann@example.com"}
    r2 = {"reservation_id": 2, "car_id": 7, "customer_email": "bob@example.com"}
    cdc = [
        ("carinfo", enc.encode("carinfo", "load", {"car_id": 7, "fleet": "busan"}, t - 3600_000)),
        ("deviceinfo", enc.encode("deviceinfo", "load", {"device_id": "old", "car_id": 7}, t - 3600_000)),
        ("reservation", enc.encode("reservation", "insert", {**r1, "status": "ACTIVE"}, t + 1 * minute)),
        ("reservation", enc.encode("reservation", "update", {**r1, "status": "ENDED"}, t + 4 * minute)),
        ("reservation", enc.encode("reservation", "insert", {**r2, "status": "ACTIVE"}, t + 4 * minute)),
        ("deviceinfo", enc.encode("deviceinfo", "delete", {"device_id": "old", "car_id": 7}, t + 7 * minute)),
        ("deviceinfo", enc.encode("deviceinfo", "insert", {"device_id": "new", "car_id": 7}, t + 7 * minute)),
    ]
    writer = KafkaWriter(s.kafka_bootstrap, stage="test.produce")
    for table, messages in cdc:
        for key, value in messages:
            writer.send_to(s.cdc_topic(table), key, value)
    # The snapshot has every change before any event is joined: t1's events are processed after it changed.
    writer.flush()
    run_to_eof("snapshot", s, tmp_path / "snapshot.log")
    events = [
        ("new", 1, t + 8 * minute),  # t2: the new device, r2 running
        ("old", 1, t + 2 * minute),  # t1, late: the old device at 10:02, r1 running
        ("old", 2, t + 5 * minute),  # between: r1 ended, r2 running, the old device still in the car
        ("old", 3, t + 0 * minute),  # before any reservation
    ]
    for device, seq, ts in events:
        writer.send_to(s.topic_telemetry, device.encode(), telemetry(device, seq, ts))
    writer.flush()
    run_to_eof("enrich", s, tmp_path / "enrich.log")

    first = enriched_bytes(s, len(events))
    docs: dict[str, Any] = {eid: orjson.loads(body) for eid, body in first.items()}
    joined = {eid: (d["car_id"], (d["reservation"] or {}).get("customer_email"), d["enrichment"]["status"])
              for eid, d in docs.items()}  # fmt: skip
    assert joined == {
        "new:1": (7, "bob@example.com", "ok"),
        "old:1": (7, "ann@example.com", "ok"),
        "old:2": (7, "bob@example.com", "ok"),
        "old:3": (7, None, "ok"),
    }

    # A replay from the beginning (fresh outputs, no recovery state) gives byte-identical events.
    again = s.model_copy(update={"topic_enriched": s.topic_enriched + ".replay",
                                 "state_prefix": s.state_prefix + "replay:",
                                 "history_dir": tmp_path / "replay-history"})  # fmt: skip
    from stack.topics import create_topics, topic_specs

    create_topics(again.kafka_bootstrap, topic_specs(again))
    run_to_eof("enrich", again, tmp_path / "replay.log")
    assert enriched_bytes(again, len(events)) == first
