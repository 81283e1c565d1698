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

from enrich.asof import BEGINNING, Merged, Timeline
from enrich.pipeline.join import CarEvents
from enrich.pipeline.state import BucketInput, StateCore
from enrich.rules.engine import RuleEngine
from enrich.rules.model import Rule
from enrich.tables import DEFAULT_MODEL, JoinModel
from enrich.telemetry import Telemetry

CHUNK = 500


def replay(
    rules: list[Rule],
    events: Iterable[dict[str, Any]],
    *,
    chunk: int = CHUNK,
    model: JoinModel = DEFAULT_MODEL,
) -> list[dict[str, Any]]:
    """Outlier events the pack gives for enriched events (schemas/enriched.v1), in event time. Each event
    brings the rows it was joined with (``car`` and the child roles of ``model``)."""
    devices: dict[str, Timeline] = {}

    def lookup(device_ids: Collection[str]) -> Mapping[str, Timeline | None]:
        return {d: devices.get(d) for d in device_ids}

    core = StateCore(RuleEngine(rules), lookup, model=model)
    ordered = sorted((e for e in events if e.get("car_id") is not None), key=lambda e: (e["ts"], e["seq"]))
    out: list[dict[str, Any]] = []
    for start in range(0, len(ordered), chunk):
        cars: dict[int, CarEvents] = {}
        for e in ordered[start : start + chunk]:
            merged = Merged({"device": {model.car_key: e["car_id"]}}, {}, 1)
            devices[e["device_id"]] = Timeline([BEGINNING], [merged])
            ce = cars.get(e["car_id"])
            if ce is None:
                ce = cars[e["car_id"]] = CarEvents([])
            rows = (e.get("car"), {c.name: e.get(c.name) for c in model.children})
            ce.add(Telemetry(e["device_id"], e["ts"], e["seq"], e["signals"]), rows)
        progress = max(e["ts"] for e in ordered[start : start + chunk])
        result = core.process(BucketInput(cars, "replay", progress), progress)
        out += [orjson.loads(body) for _car, body in result.outliers]
    if ordered:
        out += [orjson.loads(body) for _car, body in core.finish(ordered[-1]["ts"]).outliers]
    return out
