"""Outlier rules inside the enrichment pass, checked against the simulator's ground truth on real Kafka."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from simulator.scenarios import SCENARIOS
from tests.integration.pipeline import run_to_eof
from tests.kafka_util import consume_all
from tests.test_schemas import Target

pytestmark = pytest.mark.integration

RULE_OF = {
    "headlights-left-on": "headlights-left-on",
    "low-battery": "low-12v-battery",
    "device-silent": "device-silent",
}


def test_scenarios_fire_and_resolve_exactly_once_and_controls_stay_quiet(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    s = pipeline_settings
    cfg = SimConfig(vehicles=150, rate=3000, duration=8, scenarios=list(SCENARIOS), incidents_per_scenario=2,
                    cdc_rate=2, ground_truth=tmp_path / "truth.json")  # fmt: skip
    Simulation(cfg, s).run()
    run_to_eof("snapshot", s, tmp_path / "snap.log")
    run_to_eof("enrich", s, tmp_path / "enrich.log")

    outliers = [orjson.loads(m.value() or b"") for m in consume_all(s.kafka_bootstrap, [s.topic_outliers])]
    validator = Target("outlier", None).validator()
    for o in outliers:
        validator.validate(o)
    truth: dict[str, Any] = orjson.loads((tmp_path / "truth.json").read_bytes())
    by_rule_car: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for o in outliers:
        by_rule_car[(o["rule_id"], o["car_id"])].append(o)
    for scenario in SCENARIOS:
        rule = RULE_OF[scenario]
        injected = [i for i in truth["incidents"] if i["scenario"] == scenario]
        expected = {i["car_id"] for i in injected if i["expect_alert"]}
        alerted = {car for (r, car) in by_rule_car if r == rule}
        assert alerted == expected, (scenario, alerted, expected)  # none for controls or other vehicles
        for inc in (i for i in injected if i["expect_alert"]):
            events = by_rule_car[(rule, inc["car_id"])]
            assert [e["status"] for e in events] == ["firing", "resolved"], (scenario, events)
            assert events[0]["incident_id"] == events[1]["incident_id"]
            firing, resolved = events
            # event-time bounds: the incident starts inside the injected window (a silent device may only be
            # noticed when it reports again, one reporting interval after the window) and ends after it
            interval_ms = cfg.vehicles * cfg.devices_per_car / cfg.rate * truth["time_scale"] * 1000
            assert inc["starts_at"] - 60_000 <= firing["starts_at"] <= inc["ends_at"] + 2 * interval_ms
            assert resolved["ends_at"] >= inc["ends_at"] - 60_000
            if scenario == "headlights-left-on":  # the renting customer's address travels with the alert
                assert firing["snapshot"]["reservation"]["customer_email"].endswith("@example.com")
