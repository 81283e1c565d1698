"""Bring your own tables: a second, differently shaped configuration through the real flows on the real
broker and Redis — other table and column names, bookings chosen by a validity interval (no status column),
an extra "latest" child, rules reading the roles, the CLI, and the replay of ``enrich rules test``."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from enrich.rules.model import load_rules
from enrich.rules.replay import replay
from enrich.settings import Settings
from simulator.cdc import CdcEncoder
from simulator.run import SimConfig, Simulation
from stack.topics import create_topics, topic_specs
from tests.integration.flow_proc import flow_env
from tests.integration.pipeline import run_to_eof, vehicle_states
from tests.kafka_util import consume_all
from tests.tables_alt import alt_model, write_alt
from tests.test_schemas import SCHEMAS_DIR, _registry

pytestmark = pytest.mark.integration


def envelope_validator(name: str) -> Draft202012Validator:
    """The published schema with its row definitions opened up, as a user with other tables would."""
    schema = copy.deepcopy(json.loads((SCHEMAS_DIR / f"{name}.v1.schema.json").read_text()))
    for row in ("carRow", "deviceRow"):
        if row in schema["$defs"]:
            schema["$defs"][row] = {"type": "object"}
    return Draft202012Validator(schema, registry=_registry())


def test_a_second_configuration_runs_the_whole_pipeline(isolated_settings: Settings, tmp_path: Path) -> None:
    tables, rules = write_alt(tmp_path)
    s = isolated_settings.model_copy(update={"tables_file": tables, "rules_file": rules})
    create_topics(s.kafka_bootstrap, topic_specs(s))
    assert set(s.cdc_topics) == {"vehicles", "trackers", "bookings", "insurance_policies"}
    cfg = SimConfig(vehicles=60, rate=1500, duration=4, cdc_rate=0, scenarios=["headlights-left-on"],
                    incidents_per_scenario=2, ground_truth=tmp_path / "truth.json")  # fmt: skip
    sim = Simulation(cfg, s)
    booked = sorted(sim.fleet.active_reservation)
    uninsured = booked[0]  # its policy is downgraded before any telemetry: the ops rule must fire for it
    enc = CdcEncoder("debezium", lsn_start=10**12, tables=alt_model().tables)
    policy = {"policy_no": f"insurance-{uninsured}", "vehicle_no": uninsured, "coverage": "basic"}
    report = sim.run()
    for key, value in enc.encode("insurance_policies", "update", policy, sim.start_ms - 500):
        producer_send(s, "insurance_policies", key, value)
    run_to_eof("snapshot", s, tmp_path / "snapshot.log")
    run_to_eof("enrich", s, tmp_path / "enrich.log")

    # Enriched events carry the rows by role, in the configured shape.
    messages = consume_all(s.kafka_bootstrap, [s.topic_enriched], expected=report.events)
    events = [orjson.loads(m.value() or b"") for m in messages]
    assert len(events) == report.events
    validator = envelope_validator("enriched")
    for e in events[:: max(1, len(events) // 100)]:
        validator.validate(e)
    assert all(e["enrichment"]["status"] == "ok" for e in events)
    assert all("reservation" not in e for e in events)
    for e in events:
        assert e["car"]["vehicle_no"] == e["car_id"] == e["device"]["vehicle_no"]
        assert e["device"]["imei"] == e["device_id"]
        assert e["insurance"]["policy_no"] == f"insurance-{e['car_id']}"
        reservation = sim.fleet.active_reservation.get(e["car_id"])
        if reservation is None:
            assert e["booking"] is None
        else:
            booking = e["booking"]
            assert booking["booking_ref"] == reservation and "status" not in booking
            assert booking["starts_at"] <= e["ts"] and booking["ends_at"] is None

    # Vehicle states and outliers carry the roles too; rules read `booking.*` and `insurance.*`.
    states = vehicle_states(s)
    assert {"booking", "insurance"} <= states[booked[0]].keys() and "reservation" not in states[booked[0]]
    outliers = [orjson.loads(m.value() or b"") for m in consume_all(s.kafka_bootstrap, [s.topic_outliers])]
    ops = {
        o["car_id"] for o in outliers if o["rule_id"] == "booked-but-uninsured" and o["status"] == "firing"
    }
    assert ops == {uninsured}
    truth: dict[str, Any] = orjson.loads((tmp_path / "truth.json").read_bytes())
    expected = {i["car_id"] for i in truth["incidents"] if i["expect_alert"]}
    lights = [o for o in outliers if o["rule_id"] == "headlights-left-on" and o["status"] == "firing"]
    assert {o["car_id"] for o in lights} == expected
    assert all(o["snapshot"]["booking"]["customer_email"].endswith("@example.com") for o in lights)
    outlier_validator = envelope_validator("outlier")
    for o in outliers:
        outlier_validator.validate(o)

    # `enrich rules test` replays the recorded events through the same model and rules: same incidents.
    model = alt_model()
    replayed = replay(load_rules(rules, model.attribute_roles), events, model=model)
    assert {(o["incident_id"], o["status"]) for o in replayed} == {
        (o["incident_id"], o["status"]) for o in outliers
    }

    # The CLI reads the model: a device's join by role, and a child row's versions by role name.
    device = events[0]["device_id"]
    got = cli(s, "snapshot", "get", "device", device)
    assert set(got["rows"]) == {"device", "car", "booking", "insurance"} and got["devices"] == 1
    versions = cli(s, "snapshot", "get", "insurance", f"insurance-{uninsured}")
    assert [v["row"]["coverage"] for v in versions["versions"]] == ["full", "basic"]


def producer_send(s: Settings, table: str, key: bytes, value: bytes | None) -> None:
    from connectors.kafka_writer import KafkaWriter

    writer = KafkaWriter(s.kafka_bootstrap, stage="test.produce")
    writer.send_to(s.cdc_topic(table), key, value)
    writer.flush()


def cli(s: Settings, *args: str) -> Any:
    result = subprocess.run([sys.executable, "-m", "cli.main", *args], env=flow_env(s), capture_output=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return orjson.loads(result.stdout)
