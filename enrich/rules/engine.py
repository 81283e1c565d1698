"""Alert states in the style of Prometheus alerting rules, per (rule, vehicle), in event time.

inactive → pending when the condition becomes true (``active_since``); pending → firing once it has held for
``for``; firing → resolved when it is false and ``keep_firing_for`` has passed since it was last true (which
also absorbs flapping); a pending alert whose condition turns false is dropped without a trace. Each firing
gets one incident id per (rule, vehicle, start), and a firing and a resolved outlier event.

Time is event time only: a vehicle is evaluated at the time of each of its events, and at the times
``next_deadline`` names — when a pending alert reaches its ``for``, when a firing alert's
``keep_firing_for`` runs out, when a time-dependent signal crosses a threshold (``enrich.rules.pack``).
Because those times come from the data (an event's timestamp, a last-seen time plus a threshold), the
start and end of every incident, and so its id, are the same however the input is batched, on any number
of processes, and on replay. The caller decides *when* (in processing time) to evaluate a deadline — the
watermark — never *what* it says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from enrich.rules.model import Rule
from enrich.rules.names import ATTR, VehicleFacts
from enrich.rules.pack import Pack

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


Alerts = dict[str, AlertState]  # rule id -> state, of one vehicle


@dataclass(slots=True)
class RuleEngine:
    rules: Sequence[Rule]
    states: dict[int, Alerts] = field(default_factory=dict)  # car -> rule id -> state (see ``evaluate``)
    pack: Pack = field(init=False)

    def __post_init__(self) -> None:
        self.rules = list(self.rules)
        self.pack = Pack(self.rules)

    @property
    def inputs(self) -> frozenset[str]:
        """Signals (and ``ATTR``) whose change can change a condition; other changes need no evaluation."""
        return self.pack.inputs

    def evaluate(
        self, facts: VehicleFacts, now: int, *, wall_ms: int = 0, changed: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """``step`` with the alert states kept in ``self.states`` (tests, tools)."""
        car = facts.car_id
        alerts = self.states.get(car)
        if alerts is None:
            alerts = {}
        out = self.step(facts, alerts, now, wall_ms=wall_ms, changed=changed)
        if alerts:
            self.states[car] = alerts
        else:
            self.states.pop(car, None)
        return out

    def step(
        self,
        facts: VehicleFacts,
        alerts: Alerts,
        now: int,
        *,
        wall_ms: int = 0,
        changed: set[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Evaluate every rule for one vehicle at event time ``now``, updating ``alerts`` in place; returns
        outlier events (``generated_at`` = ``wall_ms``, the processing time). With ``changed`` (the inputs
        that changed since the last evaluation) and no alert pending or firing, nothing is evaluated when no
        input of the pack changed: no condition can have changed, but for the passing of time, which
        deadlines cover."""
        if changed is not None and not alerts and not (changed & self.pack.inputs):
            return []
        trues = self.pack.truths(facts, now)
        if not trues and not alerts:
            return []
        rules = self.rules
        out: list[dict[str, Any]] = []
        true_ids = set()
        for i in trues:
            rule = rules[i]
            true_ids.add(rule.id)
            st = alerts.get(rule.id)
            if st is None:
                st = alerts[rule.id] = AlertState(active_since=now, last_true=now)
            elif now > st.last_true:
                st.last_true = now
            if not st.firing and now - st.active_since >= rule.for_ms:
                st.firing = True
                st.incident_id = incident_id(rule.id, facts.car_id, st.active_since)
                out.append(self._event(rule, facts, st, "firing", now, wall_ms))
        if len(alerts) > len(true_ids):
            index = self.pack.index
            for rid in [r for r in alerts if r not in true_ids]:
                st = alerts[rid]
                if not st.firing:
                    del alerts[rid]  # pending that did not last: no alert
                else:
                    rule = rules[index[rid]]
                    if now - st.last_true >= rule.keep_firing_for_ms:
                        out.append(self._event(rule, facts, st, "resolved", now, wall_ms))
                        del alerts[rid]
        return out

    def next_deadline(self, facts: VehicleFacts, alerts: Alerts | None, now: int) -> int | None:
        """The first event time after ``now`` at which evaluating the vehicle again may change something
        although no event arrives (``now`` being the time of its last evaluation)."""
        best = self.pack.change_points(facts, now)
        if alerts:
            index = self.pack.index
            for rid, st in alerts.items():
                rule = self.rules[index[rid]]
                if not st.firing:
                    t = st.active_since + rule.for_ms
                elif st.last_true < now:
                    t = st.last_true + rule.keep_firing_for_ms
                else:
                    continue
                if t > now and (best is None or t < best):
                    best = t
        return best

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
        for tag in ("fleet", "environment", "stage"):  # the car's resource tags (silences scope by them)
            if f.car is not None and f.car.get(tag) is not None:
                labels.setdefault(tag, str(f.car[tag]))
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
            "snapshot": {"car": f.car, **f.children, "signals": signals},
        }


__all__ += ["ATTR", "Alerts"]
