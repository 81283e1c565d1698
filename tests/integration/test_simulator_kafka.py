"""The simulator into the real broker: CDC first, telemetry after, and a ground truth the stream bears out."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from simulator.scenarios import SCENARIOS
from stack.topics import create_topics, topic_specs
from tests.fleet_truth import alerting_cars, derive_alerts, near_miss_cars
from tests.kafka_util import consume_all
from tests.test_schemas import Target

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("cdc_format", ["debezium", "dms"])
def test_simulated_stream_bears_out_the_ground_truth(
    isolated_settings: Settings, tmp_path: Path, cdc_format: str
) -> None:
    s = isolated_settings
    create_topics(s.kafka_bootstrap, topic_specs(s))
    truth_file = tmp_path / "truth.json"
    config = SimConfig(
        vehicles=120,
        devices_per_car=2,
        rate=2000,
        duration=5,
        scenarios=list(SCENARIOS),
        incidents_per_scenario=2,
        cdc_format=cdc_format,  # type: ignore[arg-type]
        cdc_rate=4,
        ground_truth=truth_file,
    )
    report = Simulation(config, s).run()
    assert report.delivery_errors == 0
    assert report.events == 10_000

    cdc = consume_all(s.kafka_bootstrap, list(s.cdc_topics.values()), expected=report.cdc_messages)
    assert len(cdc) == report.cdc_messages
    telemetry = consume_all(s.kafka_bootstrap, [s.topic_telemetry], expected=report.events)
    assert len(telemetry) == report.events

    # Every message the simulator writes is valid under the published schemas.
    cdc_schema = Target(f"cdc-{cdc_format}", None).validator()
    for msg in cdc:
        if msg.value() is not None:
            cdc_schema.validate(orjson.loads(msg.value() or b"null"))
    telemetry_schema = Target("telemetry", None).validator()
    for msg in telemetry[:: max(1, len(telemetry) // 500)]:
        telemetry_schema.validate(orjson.loads(msg.value() or b"null"))
    Target("ground-truth", None).validator().validate(orjson.loads(truth_file.read_bytes()))

    # The current device → car map, replayed from the CDC stream (deletes are tombstoned or marked).
    device_car: dict[str, int] = {}
    for msg in cdc:
        value = msg.value()
        if value is None or not str(msg.topic()).endswith("deviceinfo"):
            continue
        doc = orjson.loads(value)
        row = doc.get("after") or doc.get("before") if cdc_format == "debezium" else doc["data"]
        device_car.setdefault(row["device_id"], row["car_id"])
    events = [orjson.loads(m.value() or b"null") for m in telemetry]
    assert {e["device_id"] for e in events} <= set(device_car)  # no telemetry from unknown devices
    for msg, event in zip(telemetry, events, strict=True):
        assert msg.key() == event["device_id"].encode()

    # Per device, sequence numbers increase in partition order.
    last_seq: dict[str, int] = {}
    for event in events:
        assert event["seq"] > last_seq.get(event["device_id"], 0)
        last_seq[event["device_id"]] = event["seq"]

    truth = orjson.loads(truth_file.read_bytes())
    assert truth["vehicles"] == 120 and len(truth["incidents"]) == 2 * 2 * len(SCENARIOS)
    holds = derive_alerts(events, device_car)
    sure, maybe = alerting_cars(holds), near_miss_cars(holds)
    for scenario in SCENARIOS:
        incidents = [t for t in truth["incidents"] if t["scenario"] == scenario]
        expected = {t["car_id"] for t in incidents if t["expect_alert"]}
        controls = {t["car_id"] for t in incidents if t["control"]}
        assert sure[scenario] == expected, scenario
        assert not (maybe[scenario] & controls), scenario
