"""Alert states in the style of Prometheus alerting rules, per (rule, vehicle), in event time.

inactive → pending when the condition becomes true (``active_since``); pending → firing once it has held for
``for``; firing → resolved when it is false and has been for ``keep_firing_for`` (which also absorbs
flapping); a pending alert whose condition turns false is dropped without a trace. Each firing gets one
incident id per (rule, vehicle, start), and a firing and a resolved outlier event.

The engine evaluates a vehicle when its state changes and on timers (``sweep``), with "now" being event
time: the vehicle's newest event, or the watermark when sweeping — so "device silent for 10 minutes" or
"headlights still on and the device went quiet" fire without new events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from enrich.rules.model import Rule

DOORS = (
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen",
)


@dataclass(slots=True)
class AlertState:
    active_since: int
    last_true: int
    firing: bool = False
    incident_id: str = ""


@dataclass(slots=True)
class VehicleFacts:
    """What rules read about one vehicle (kept by the flow alongside its latest state)."""

    car_id: int
    values: dict[str, Any]
    last_seen: int
    device_seen: dict[str, int]
    car: dict[str, Any] | None
    reservation: dict[str, Any] | None
    speed_prev: tuple[float, int] | None = None  # (km/h, ts) of the reading before the newest
    speed_last: tuple[float, int] | None = None
    engine_on_at: int | None = None  # event time the engine was last seen running
    device_id: str | None = None  # device of the newest event


def environment(f: VehicleFacts, now: int) -> dict[str, Any]:
    """Signals, derived signals and snapshot attributes, as rule names see them."""
    env = dict(f.values)
    doors = [f.values.get(d) for d in DOORS]
    known = [d for d in doors if d is not None]
    env["any_door_open"] = any(known) if known else None
    env["all_doors_closed"] = (not any(known)) if known else None
    env["seconds_since_last_event"] = (now - min(f.device_seen.values())) / 1000 if f.device_seen else None
    if f.speed_prev is not None and f.speed_last is not None and f.speed_last[1] > f.speed_prev[1]:
        drop = f.speed_prev[0] - f.speed_last[0]
        env["speed_drop_kmh"] = drop
        env["speed_change_rate_kmh_s"] = drop / ((f.speed_last[1] - f.speed_prev[1]) / 1000)
    running = f.values.get("Vehicle.Powertrain.CombustionEngine.IsRunning")
    if running is True:
        env["engine_off_for_s"] = 0.0
    elif running is False and f.engine_on_at is not None:
        env["engine_off_for_s"] = (now - f.engine_on_at) / 1000
    if f.car is not None:
        for k, v in f.car.items():
            env[f"car.{k}"] = v
    env["reservation.active"] = f.reservation is not None
    if f.reservation is not None:
        for k, v in f.reservation.items():
            env[f"reservation.{k}"] = v
    return env


def incident_id(rule_id: str, car_id: int, start: int) -> str:
    return hashlib.sha1(f"{rule_id}|{car_id}|{start}".encode()).hexdigest()[:20]


def fingerprint(rule: Rule, car_id: int) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(rule.labels.items()))
    return hashlib.sha256(f"{rule.id}|{car_id}|{labels}".encode()).hexdigest()[:16]


@dataclass(slots=True)
class RuleEngine:
    rules: list[Rule]
    states: dict[tuple[str, int], AlertState] = field(default_factory=dict)

    @property
    def timed(self) -> list[Rule]:
        return [r for r in self.rules if r.uses_time]

    def evaluate(
        self, facts: VehicleFacts, now: int, rules: Iterable[Rule] | None = None, *, wall_ms: int = 0
    ) -> list[dict[str, Any]]:
        """Evaluate ``rules`` (default all) for one vehicle at event time ``now``; returns outlier events
        (``generated_at`` = ``wall_ms``, the processing time)."""
        env = environment(facts, now)
        out: list[dict[str, Any]] = []
        for rule in self.rules if rules is None else rules:
            key = (rule.id, facts.car_id)
            state = self.states.get(key)
            if rule.condition(env):
                if state is None:
                    state = self.states[key] = AlertState(active_since=now, last_true=now)
                state.last_true = max(state.last_true, now)
                if not state.firing and now - state.active_since >= rule.for_ms:
                    state.firing = True
                    state.incident_id = incident_id(rule.id, facts.car_id, state.active_since)
                    out.append(self._event(rule, facts, env, state, "firing", now, wall_ms))
            elif state is not None:
                if not state.firing:
                    del self.states[key]  # pending that did not last: no alert
                elif now - state.last_true >= rule.keep_firing_for_ms:
                    out.append(self._event(rule, facts, env, state, "resolved", now, wall_ms))
                    del self.states[key]
        return out

    def pending_or_firing(self, car_id: int) -> bool:
        return any(key[1] == car_id for key in self.states)

    def _event(
        self,
        rule: Rule,
        f: VehicleFacts,
        env: dict[str, Any],
        st: AlertState,
        status: str,
        now: int,
        wall: int,
    ) -> dict[str, Any]:
        labels = {"alertname": rule.id, "severity": rule.severity, "car_id": str(f.car_id), **rule.labels}
        if f.car is not None and f.car.get("fleet") is not None:
            labels.setdefault("fleet", str(f.car["fleet"]))
        annotations = {
            "summary": rule.summary,
            **({"description": rule.description} if rule.description else {}),
        }
        annotations.update(rule.annotations)
        signals = {n: env[n] for n in sorted(rule.condition.names) if n.startswith("Vehicle.") and n in env}
        return {
            "incident_id": st.incident_id,
            "fingerprint": fingerprint(rule, f.car_id),
            "rule_id": rule.id,
            "status": status,
            "severity": rule.severity,
            "car_id": f.car_id,
            "device_id": f.device_id,
            "labels": labels,
            "annotations": annotations,
            "starts_at": st.active_since,
            "ends_at": now if status == "resolved" else None,
            "generated_at": wall,
            "snapshot": {"car": f.car, "reservation": f.reservation, "signals": signals},
        }
