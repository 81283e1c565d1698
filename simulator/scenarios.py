"""Injected outliers and their near-miss controls, with the ground truth that tests and benchmarks check.

Each scenario forces one car into a known condition for a known stretch of event time. The thresholds are
those of the default rule pack; a control vehicle comes close (same signals, a door open, a shorter hold,
a voltage just above the limit) and must not alert.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

ScenarioName = Literal["headlights-left-on", "low-battery", "device-silent"]
Variant = Literal["incident", "door-open", "short", "near-threshold"]  # an injection, or a control
SCENARIOS: tuple[ScenarioName, ...] = ("headlights-left-on", "low-battery", "device-silent")

# How long the condition must hold to alert (default rule pack) and how long incidents/controls hold it.
THRESHOLD_S: dict[ScenarioName, float] = {
    "headlights-left-on": 60.0,
    "low-battery": 120.0,
    "device-silent": 600.0,
}
HOLD_S: dict[ScenarioName, float] = {
    "headlights-left-on": 180.0,
    "low-battery": 300.0,
    "device-silent": 900.0,
}
SHORT_HOLD_S: dict[ScenarioName, float] = {
    "headlights-left-on": 25.0,
    "low-battery": 40.0,
    "device-silent": 240.0,
}
LOW_VOLTAGE = 11.2  # below the 11.8 V limit
NEAR_VOLTAGE = 12.0  # just above it
PARK_MARGIN_S = 30.0  # the car is parked this long before and after the window
WARMUP_S = 60.0
TAIL_S = 90.0


@dataclass(frozen=True, slots=True)
class Injection:
    """One injected incident or control on one car (times in event-time ms)."""

    scenario: ScenarioName
    car_id: int
    device_id: str
    control: bool
    variant: Variant
    starts_at: int
    ends_at: int

    @property
    def hold_s(self) -> float:
        return (
            0.0 if self.variant in ("door-open", "near-threshold") else (self.ends_at - self.starts_at) / 1000
        )

    @property
    def expect_alert(self) -> bool:
        return self.hold_s >= THRESHOLD_S[self.scenario]

    def park_window(self) -> tuple[int, int]:
        margin = int(PARK_MARGIN_S * 1000)
        return self.starts_at - margin, self.ends_at + margin

    def to_truth(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(
            hold_s=self.hold_s,
            threshold_s=THRESHOLD_S[self.scenario],
            expect_alert=self.expect_alert,
        )
        return record


def sim_span_needed(scenarios: list[ScenarioName]) -> float:
    """Seconds of event time a run needs so every requested scenario starts, holds and ends."""
    if not scenarios:
        return 0.0
    return WARMUP_S + max(HOLD_S[s] for s in scenarios) + 2 * PARK_MARGIN_S + TAIL_S


def plan_injections(
    rng: random.Random,
    scenarios: list[ScenarioName],
    cars: list[int],
    first_device: dict[int, str],
    *,
    per_scenario: int,
    start_ms: int,
    span_s: float,
) -> list[Injection]:
    """Pick distinct cars for each scenario's incidents and controls and place their windows in the run."""
    wanted = 2 * per_scenario * len(scenarios)
    if wanted > len(cars):
        raise ValueError(f"{wanted} scenario vehicles needed but the fleet has only {len(cars)} cars")
    chosen = rng.sample(cars, wanted)
    out: list[Injection] = []
    for scenario in scenarios:
        controls: dict[str, tuple[Variant, ...]] = {
            "headlights-left-on": ("door-open", "short"),
            "low-battery": ("near-threshold", "short"),
            "device-silent": ("short",),
        }
        control_variants = controls[scenario]
        for i in range(2 * per_scenario):
            car = chosen.pop()
            control = i % 2 == 1
            variant: Variant = control_variants[(i // 2) % len(control_variants)] if control else "incident"
            hold = SHORT_HOLD_S[scenario] if variant == "short" else HOLD_S[scenario]
            latest = span_s - TAIL_S - PARK_MARGIN_S - hold
            earliest = WARMUP_S + PARK_MARGIN_S
            offset = rng.uniform(earliest, max(earliest, latest))
            starts = start_ms + int(offset * 1000)
            out.append(
                Injection(
                    scenario, car, first_device[car], control, variant, starts, starts + int(hold * 1000)
                )
            )
    return out
