"""Replay recorded enriched events through a rule pack (``enrich rules test``), through the flow's own
state step (``enrich.pipeline.state.StateCore``), so a replay and the flow can never disagree.

Events are fed in event-time order, in chunks, as one partition whose progress is the chunk's newest event
time (the watermark); timers fire at their data-defined times, so the chunk size does not change the
result. A device counts for a car as long as its newest recorded event was joined to that car.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import orjson

from enrich.pipeline.join import CarEvents
from enrich.pipeline.roles import DEFAULT_ROLES
from enrich.pipeline.state import BucketInput, StateCore
from enrich.rules.engine import RuleEngine
from enrich.rules.model import Rule
from enrich.snapshot import Merged
from enrich.telemetry import Telemetry

CHUNK = 500


def replay(
    rules: list[Rule], events: Iterable[dict[str, Any]], *, chunk: int = CHUNK
) -> list[dict[str, Any]]:
    """Outlier events the pack gives for enriched events (schemas/enriched.v1), in event time."""
    devices: dict[str, Merged] = {}

    def lookup(device_ids: Collection[str]) -> Mapping[str, Merged | None]:
        return {d: devices.get(d) for d in device_ids}

    core = StateCore(RuleEngine(rules), lookup)
    ordered = sorted((e for e in events if e.get("car_id") is not None), key=lambda e: (e["ts"], e["seq"]))
    out: list[dict[str, Any]] = []
    roles = DEFAULT_ROLES
    for start in range(0, len(ordered), chunk):
        cars: dict[int, CarEvents] = {}
        for e in ordered[start : start + chunk]:
            devices[e["device_id"]] = Merged({roles.device: {roles.car_key: e["car_id"]}}, {})
            ce = cars.get(e["car_id"])
            if ce is None:
                ce = cars[e["car_id"]] = CarEvents([])
            ce.events.append(Telemetry(e["device_id"], e["ts"], e["seq"], e["signals"]))
            if e["ts"] >= ce.newest:
                ce.newest, ce.car, ce.reservation = e["ts"], e.get("car"), e.get("reservation")
        progress = max(e["ts"] for e in ordered[start : start + chunk])
        result = core.process(BucketInput(cars, "replay", progress), progress)
        out += [orjson.loads(body) for _car, body in result.outliers]
    if ordered:
        out += [orjson.loads(body) for _car, body in core.finish(ordered[-1]["ts"]).outliers]
    return out
