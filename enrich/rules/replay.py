"""Replay recorded enriched events through a rule pack (``enrich rules test``); pure, in event time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from enrich.join import CarUpdate, VehicleState
from enrich.rules.engine import RuleEngine, VehicleFacts
from enrich.rules.model import Rule
from enrich.rules.names import Extras
from enrich.snapshot import Merged
from enrich.telemetry import Telemetry


def replay(
    rules: list[Rule], events: Iterable[dict[str, Any]], *, sweep_every_ms: int = 1000
) -> list[dict[str, Any]]:
    """Fold enriched events (schemas/enriched.v1) per car in event-time order, evaluating the rules after
    each event and on a timer every ``sweep_every_ms`` of event time. Returns the outlier events."""
    engine = RuleEngine(rules)
    timed = [r for r in rules if r.uses_time]
    states: dict[int, VehicleState] = {}
    facts: dict[int, VehicleFacts] = {}
    extras: dict[int, Extras] = {}
    out: list[dict[str, Any]] = []
    last_sweep: int | None = None
    ordered = sorted((e for e in events if e.get("car_id") is not None), key=lambda e: (e["ts"], e["seq"]))
    for e in ordered:
        car = e["car_id"]
        tel = Telemetry(e["device_id"], e["ts"], e["seq"], e["signals"])
        upd = CarUpdate(car)
        rows = {"deviceinfo": e.get("device"), "carinfo": e.get("car"), "reservation": e.get("reservation")}
        merged = Merged(rows, {})
        upd.add(tel, merged)
        state = states.setdefault(car, VehicleState(car))
        state.merge(upd, e["ts"])
        ex = extras.setdefault(car, Extras())
        ex.see(tel)
        f = facts.get(car)
        if f is None:
            f = facts[car] = VehicleFacts(car, state.values, 0, ex.device_seen, None, None)
        f.last_seen, f.car, f.reservation, f.device_id = (
            state.last_seen,
            state.car,
            state.reservation,
            tel.device_id,
        )
        f.speed_prev, f.speed_last, f.engine_on_at = ex.speed_prev, ex.speed_last, ex.engine_on_at
        out += engine.evaluate(f, tel.ts, wall_ms=tel.ts)
        if last_sweep is None or tel.ts - last_sweep >= sweep_every_ms:
            last_sweep = tel.ts
            active = set(engine.states)
            for other, of in facts.items():
                if other in active or timed:
                    out += engine.evaluate(of, max(tel.ts, of.last_seen), None if other in active else timed,
                                           wall_ms=tel.ts)  # fmt: skip
    return out
