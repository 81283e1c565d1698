"""Derive outliers from a telemetry stream independently of the simulator, to check its ground truth."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from simulator.model import DOORS
from simulator.scenarios import THRESHOLD_S

LIGHTS = "Vehicle.Body.Lights.Beam.Low.IsOn"
ENGINE = "Vehicle.Powertrain.CombustionEngine.IsRunning"
VOLTAGE = "Vehicle.LowVoltageBattery.CurrentVoltage"


def flatten(signals: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in signals.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def _num(value: Any) -> float:
    return float(value)


def headlights_condition(sig: dict[str, Any]) -> bool:
    return bool(sig[LIGHTS]) and not sig[ENGINE] and not any(sig[d] for d in DOORS)


def low_battery_condition(sig: dict[str, Any]) -> bool:
    return _num(sig[VOLTAGE]) < 11.8


@dataclass(frozen=True)
class Held:
    """How long a condition held: at least ``low_s`` (first to last event showing it), at most ``high_s``
    (first event showing it to the first event not showing it)."""

    low_s: float
    high_s: float


def longest_holds(events: Iterable[tuple[int, dict[str, Any]]], condition: Any) -> Held:
    """Longest run of ``condition`` over (ts, flat signals) events sorted by ts."""
    best = Held(0.0, 0.0)
    first: int | None = None
    last: int | None = None
    for ts, sig in events:
        if condition(sig):
            first = ts if first is None else first
            last = ts
        elif first is not None and last is not None:
            held = Held((last - first) / 1000, (ts - first) / 1000)
            best = held if held.low_s > best.low_s else best
            first = last = None
    if first is not None and last is not None:
        held = Held((last - first) / 1000, float("inf"))
        best = held if held.low_s > best.low_s else best
    return best


def derive_alerts(telemetry: list[dict[str, Any]], device_car: dict[str, int]) -> dict[str, dict[int, Held]]:
    """Per scenario, per car: the longest hold of its condition (device-silent: longest gap per device)."""
    by_car: dict[int, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    by_device: dict[str, list[int]] = defaultdict(list)
    for event in telemetry:
        sig = flatten(event["signals"])
        by_car[device_car[event["device_id"]]].append((event["ts"], sig))
        by_device[event["device_id"]].append(event["ts"])
    out: dict[str, dict[int, Held]] = {"headlights-left-on": {}, "low-battery": {}, "device-silent": {}}
    for car, events in by_car.items():
        events.sort(key=lambda e: e[0])
        out["headlights-left-on"][car] = longest_holds(events, headlights_condition)
        out["low-battery"][car] = longest_holds(events, low_battery_condition)
    for device, stamps in by_device.items():
        stamps.sort()
        gap = max((b - a for a, b in pairwise(stamps)), default=0) / 1000
        car = device_car[device]
        prev = out["device-silent"].get(car, Held(0.0, 0.0))
        out["device-silent"][car] = Held(max(prev.low_s, gap), max(prev.high_s, gap))
    return out


def alerting_cars(holds: dict[str, dict[int, Held]]) -> dict[str, set[int]]:
    """Cars whose condition surely held past the threshold."""
    return {s: {car for car, h in per.items() if h.low_s >= THRESHOLD_S[s]} for s, per in holds.items()}  # type: ignore[index]


def near_miss_cars(holds: dict[str, dict[int, Held]]) -> dict[str, set[int]]:
    """Cars whose condition may have held past the threshold (upper bound)."""
    return {s: {car for car, h in per.items() if h.high_s >= THRESHOLD_S[s]} for s, per in holds.items()}  # type: ignore[index]
