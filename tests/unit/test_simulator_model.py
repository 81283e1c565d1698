"""The simulator's ground truth matches the signals it generates (pure: sampled from the model)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from enrich.settings import Settings
from simulator.cdc import CdcEncoder
from simulator.model import SIGNALS, car_signals, car_values, encode_signals
from simulator.run import SimConfig, Simulation
from simulator.scenarios import HOLD_S, PARK_MARGIN_S, SCENARIOS, THRESHOLD_S, WARMUP_S
from tests.fleet_truth import alerting_cars, derive_alerts, flatten, near_miss_cars


def sample_run(sim: Simulation, step_s: float) -> list[dict[str, Any]]:
    """Every device reporting every ``step_s`` of event time over the whole run, minus silenced ones."""
    from simulator.model import silenced

    events: list[dict[str, Any]] = []
    end = sim.start_ms + int(sim.span_s * 1000)
    t = sim.start_ms
    seq = 0
    while t <= end:
        for device in sim.fleet.devices.values():
            car = sim.fleet.cars[device.car_id]
            if silenced(device, car, t):
                continue
            seq += 1
            events.append(
                {"device_id": device.device_id, "ts": t, "seq": seq, "signals": car_signals(car, t)}
            )
        t += int(step_s * 1000)
    return events


@pytest.fixture(scope="module")
def sim() -> Simulation:
    config = SimConfig(
        vehicles=60, rate=100, duration=10, scenarios=list(SCENARIOS), incidents_per_scenario=3
    )
    return Simulation(config, Settings(), now_ms=1_790_000_000_000)


def test_ground_truth_matches_generated_signals(sim: Simulation) -> None:
    events = sample_run(sim, step_s=5.0)
    device_car = {d.device_id: d.car_id for d in sim.fleet.devices.values()}
    holds = derive_alerts(events, device_car)
    sure, maybe = alerting_cars(holds), near_miss_cars(holds)
    truth = [inj.to_truth() for inj in sim.injections]
    assert len(truth) == 2 * 3 * len(SCENARIOS)
    for scenario in SCENARIOS:
        expected = {t["car_id"] for t in truth if t["scenario"] == scenario and t["expect_alert"]}
        controls = {t["car_id"] for t in truth if t["scenario"] == scenario and t["control"]}
        assert len(expected) == 3 and len(controls) == 3
        assert sure[scenario] == expected, scenario  # every incident, and no other car, holds long enough
        assert not (maybe[scenario] & controls), scenario  # near misses stay below the threshold


def test_controls_come_close(sim: Simulation) -> None:
    """Controls show the tell-tale signals (so a sloppy rule would fire), just not the full condition."""
    by_car = {inj.car_id: inj for inj in sim.injections if inj.control}
    for car_id, inj in by_car.items():
        mid = (inj.starts_at + inj.ends_at) // 2
        sig = car_signals(sim.fleet.cars[car_id], mid)
        if inj.scenario == "headlights-left-on":
            assert sig["Vehicle.Body.Lights.Beam.Low.IsOn"] is True
            assert sig["Vehicle.Powertrain.CombustionEngine.IsRunning"] is False
        elif inj.scenario == "low-battery":
            assert sig["Vehicle.LowVoltageBattery.CurrentVoltage"] < 12.3
        assert inj.hold_s < THRESHOLD_S[inj.scenario]


def test_time_scale_fits_scenarios_and_events_end_at_now() -> None:
    config = SimConfig(vehicles=20, rate=10, duration=20, scenarios=["device-silent"])
    sim = Simulation(config, Settings(), now_ms=1_790_000_000_000)
    assert sim.span_s >= HOLD_S["device-silent"] + WARMUP_S + 2 * PARK_MARGIN_S  # the incident fits
    assert sim.start_ms + int(sim.span_s * 1000) - int(config.duration * 1000) == 1_790_000_000_000
    for inj in sim.injections:
        assert sim.start_ms < inj.starts_at < inj.ends_at < sim.start_ms + sim.span_s * 1000


def test_encodings_carry_the_same_values(sim: Simulation) -> None:
    car = next(iter(sim.fleet.cars.values()))
    values = car_values(car, sim.start_ms + 1000)
    assert len(values) == len(SIGNALS)
    flat = encode_signals(values, "flat")
    assert flatten(encode_signals(values, "nested")) == flat
    strings = encode_signals(values, "flat-strings")
    assert strings == {k: v if isinstance(v, bool | str) else str(v) for k, v in flat.items()}
    assert any(isinstance(v, str) and v[0].isdigit() for v in strings.values())


def test_cdc_positions_only_grow_and_deletes_get_tombstones() -> None:
    enc = CdcEncoder("debezium")
    rng = random.Random(3)
    lsns = []
    for i in range(50):
        op = rng.choice(["insert", "update", "delete"])
        msgs = enc.encode("carinfo", op, {"car_id": i, "status": "ACTIVE"}, 1_000 + i)  # type: ignore[arg-type]
        lsns.append(orjson.loads(msgs[0][1] or b"null")["source"]["lsn"])
        assert len(msgs) == (2 if op == "delete" else 1)
        if op == "delete":
            assert msgs[1] == (msgs[0][0], None)
    assert lsns == sorted(lsns) and len(set(lsns)) == len(lsns)
    dms = CdcEncoder("dms")
    positions = [dms.encode("deviceinfo", "insert", {"device_id": f"d{i}"}, 5)[0][1] for i in range(20)]
    stream = [orjson.loads(p or b"null")["metadata"]["stream-position"] for p in positions]
    assert stream == sorted(stream) and len(set(stream)) == len(stream)


def test_rules_replay_of_the_simulated_fleet_matches_the_ground_truth(sim: Simulation) -> None:
    """`enrich rules test` semantics: replaying enriched events fires each injected incident once."""
    from enrich.rules.model import load_rules
    from enrich.rules.replay import replay

    device_car = {d.device_id: d.car_id for d in sim.fleet.devices.values()}
    events = [
        {**e, "car_id": device_car[e["device_id"]], "car": {"car_id": device_car[e["device_id"]]},
         "device": {"device_id": e["device_id"]}, "reservation": None}
        for e in sample_run(sim, step_s=5.0)
    ]  # fmt: skip
    outliers = replay(load_rules(None), events)
    rule_of = {"headlights-left-on": "headlights-left-on", "low-battery": "low-12v-battery",
               "device-silent": "device-silent"}  # fmt: skip
    for inj in sim.injections:
        got = [
            o["status"]
            for o in outliers
            if o["car_id"] == inj.car_id and o["rule_id"] == rule_of[inj.scenario]
        ]
        assert got == (["firing", "resolved"] if inj.expect_alert else []), (inj.scenario, inj.variant, got)


def test_rows_take_the_shape_of_the_join_model() -> None:
    from simulator.shape import Shape
    from tests.tables_alt import alt_model

    shape = Shape(alt_model())
    assert shape.car({"car_id": 7, "fleet": "x"}) == {"vehicle_no": 7, "fleet": "x"}
    assert shape.device({"device_id": "d", "car_id": 7, "kind": "k"}) == {
        "imei": "d",
        "vehicle_no": 7,
        "kind": "k",
    }
    table, row = shape.reservation(
        {
            "reservation_id": 3,
            "car_id": 7,
            "status": "ACTIVE",
            "starts_at": 10,
            "ends_at": None,
            "customer_email": "a@x",
        }
    )  # type: ignore[misc]
    assert table == "bookings" and "status" not in row  # an interval-chosen table has no status column
    assert row == {
        "booking_ref": 3,
        "vehicle_no": 7,
        "starts_at": 10,
        "ends_at": None,
        "customer_email": "a@x",
    }
    assert shape.extra_rows(7, 100) == [
        (
            "insurance_policies",
            {"policy_no": "insurance-7", "vehicle_no": 7, "coverage": "full", "issued_at": 100},
        )
    ]
