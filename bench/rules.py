"""Benchmark: rule evaluation cost per event, default pack and a pack of 100 rules.

    python -m bench.rules [--events 200000]

Evaluates the rules the way the flow does for every event (environment with derived signals and snapshot
attributes, then every rule's state machine), on a realistic stream of simulator states, and reports
microseconds per event. A plain Python closure per condition is the floor the compiled rules aim at.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from enrich.rules.engine import RuleEngine
from enrich.rules.model import load_rules, parse_rules
from enrich.rules.names import VehicleFacts
from simulator.model import Fleet, car_signals


def stream(n: int) -> list[VehicleFacts]:
    rng = random.Random(3)
    fleet = Fleet(rng, 500, 1, 1_790_000_000_000)
    cars = list(fleet.cars.values())
    out = []
    for i in range(n):
        car = cars[i % len(cars)]
        t = 1_790_000_000_000 + i * 20
        row = {"car_id": car.car_id, "fleet": car.fleet, "model": car.model}
        out.append(VehicleFacts(car.car_id, car_signals(car, t), t, {"d": t}, row, {"reservation": None}))
    return out


def hundred_rules() -> str:
    lines = []
    for i in range(100):
        cond = (
            f"Vehicle.Speed > {50 + i} and Vehicle.LowVoltageBattery.CurrentVoltage < {15 - i * 0.01:.2f}"
            f" and car.fleet != 'fleet-{i}'"
        )
        lines.append(f"- id: r{i:03d}\n  when: {cond}\n  for: {i % 5 * 10}s\n")
    return "".join(lines)


def measure(engine: RuleEngine, facts: list[VehicleFacts]) -> float:
    start = time.perf_counter()
    for f in facts:
        engine.evaluate(f, f.last_seen)
    return (time.perf_counter() - start) / len(facts) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    facts = stream(args.events)
    default = load_rules(None)
    d_us = measure(RuleEngine(default), facts)
    h_us = measure(RuleEngine(parse_rules(hundred_rules())), facts)

    def closure_rule(e: dict[str, Any]) -> bool:
        return bool(e["Vehicle.Body.Lights.Beam.Low.IsOn"] and not e["Vehicle.Speed"] > 0)

    closure = [closure_rule] * len(default)
    envs = [dict(f.values) for f in facts[:50_000]]
    start = time.perf_counter()
    for e in envs:
        for c in closure:
            c(e)
    c_us = (time.perf_counter() - start) / len(envs) * 1e6
    print(
        f"per event: default pack ({len(default)} rules) {d_us:.2f} us; 100 rules {h_us:.2f} us; "
        f"{len(default)} hand-written closures {c_us:.2f} us"
    )


if __name__ == "__main__":
    main()
