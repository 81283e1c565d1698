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
from enrich.rules.names import Ctx, VehicleFacts

__all__ = ["AlertState", "RuleEngine", "VehicleFacts", "fingerprint", "incident_id"]


@dataclass(slots=True)
class AlertState:
    active_since: int
    last_true: int
    firing: bool = False
    incident_id: str = ""


def incident_id(rule_id: str, car_id: int, start: int) -> str:
    return hashlib.sha1(f"{rule_id}|{car_id}|{start}".encode()).hexdigest()[:20]


def fingerprint(rule: Rule, car_id: int) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(rule.labels.items()))
    return hashlib.sha256(f"{rule.id}|{car_id}|{labels}".encode()).hexdigest()[:16]


_EMPTY: dict[str, AlertState] = {}


@dataclass(slots=True)
class RuleEngine:
    rules: list[Rule]
    states: dict[int, dict[str, AlertState]] = field(default_factory=dict)  # car -> rule id -> state

    def evaluate(
        self,
        facts: VehicleFacts,
        now: int,
        rules: Iterable[Rule] | None = None,
        *,
        wall_ms: int = 0,
        changed: set[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Evaluate ``rules`` (default all) for one vehicle at event time ``now``; returns outlier events
        (``generated_at`` = ``wall_ms``, the processing time). With ``changed`` (the inputs that changed
        since the last evaluation) an inactive rule none of whose inputs changed is skipped: its condition
        cannot have changed either, but for the passing of time, which timers evaluate."""
        ctx = Ctx(facts, now)
        out: list[dict[str, Any]] = []
        car = facts.car_id
        states = self.states.get(car) or _EMPTY
        for rule in self.rules if rules is None else rules:
            key = rule.id
            state = states.get(key)
            if changed is not None and state is None and not (rule.inputs & changed):
                continue
            if rule.condition(ctx):
                if state is None:
                    if states is _EMPTY:
                        states = self.states[car] = {}
                    state = states[key] = AlertState(active_since=now, last_true=now)
                state.last_true = max(state.last_true, now)
                if not state.firing and now - state.active_since >= rule.for_ms:
                    state.firing = True
                    state.incident_id = incident_id(rule.id, facts.car_id, state.active_since)
                    out.append(self._event(rule, facts, state, "firing", now, wall_ms))
            elif state is not None:
                if not state.firing:
                    del states[key]  # pending that did not last: no alert
                elif now - state.last_true >= rule.keep_firing_for_ms:
                    out.append(self._event(rule, facts, state, "resolved", now, wall_ms))
                    del states[key]
        if not states and car in self.states:
            del self.states[car]
        return out

    def _event(
        self,
        rule: Rule,
        f: VehicleFacts,
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
        signals = {n: f.values[n] for n in sorted(rule.condition.names) if n in f.values}
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
