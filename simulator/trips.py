"""Trip reports: the five-level nested JSON documents a fleet exports per finished trip (pure, no I/O).

One report is about 1 KB: the device and its firmware build, the car, and the trip with its route
(origin zone, a list of road segments, each with samples of signals and tags), events and the driver,
plus the battery with an array of cell voltages. Five levels: ``trip.route.segments[].road.lanes``.

``drift=True`` plants the three schema changes of a second batch that the flattening tests and the demo
look for: a field added at level 4 (``trip.route.segments[].surface``), a level-3 number sent as a string
(``trip.route.distance_km``), and a level-5 field removed (``trip.route.segments[].road.lanes``).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator, Sequence
from typing import Any

from simulator.model import FLEETS, MODELS

ROAD_TYPES = ("urban", "arterial", "highway", "residential")
EVENT_KINDS = ("harsh_brake", "harsh_accel", "speeding", "door_open_moving")
TAGS = ("toll", "bridge", "tunnel", "school_zone", "night")
SURFACES = ("asphalt", "concrete", "gravel")
BASE_MS = 1_718_000_000_000  # 2024-06-10


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


Car = tuple[int, str, str]  # car_id, model, fleet


def trip_report(
    rng: random.Random, n: int, *, drift: bool = False, start_ms: int = BASE_MS, cars: Sequence[Car] = ()
) -> dict[str, Any]:
    """Report number ``n``: deterministic given the generator's state (cars: pick from these)."""
    if cars:
        car_id, model, fleet = cars[rng.randrange(len(cars))]
    else:
        car_id, model, fleet = 1000 + rng.randrange(500), rng.choice(MODELS), rng.choice(FLEETS)
    started = start_ms + n * 37_000 + rng.randrange(30_000)
    segments = []
    t = started
    for seq in range(rng.randint(1, 3)):
        road: dict[str, Any] = {
            "type": rng.choice(ROAD_TYPES),
            "limits": {"speed_kmh": rng.choice((30, 50, 80, 100)), "advisory_kmh": None},
        }
        if not drift:
            road["lanes"] = rng.randint(1, 4)
        samples = []
        for _ in range(rng.randint(1, 2)):
            t += rng.randrange(5_000, 60_000)
            samples.append(
                {
                    "t_ms": t,
                    "speed_kmh": round(rng.uniform(0, 110), 1),
                    "signals": {"soc": round(rng.uniform(20, 95), 1), "lights": rng.random() < 0.3},
                }
            )
        segment: dict[str, Any] = {
            "seq": seq,
            "road": road,
            "samples": samples,
            "tags": rng.sample(TAGS, rng.randint(0, 2)),
        }
        if drift:
            segment["surface"] = rng.choice(SURFACES)
        segments.append(segment)
    distance = round(rng.uniform(0.5, 40.0), 2)
    events = [
        {
            "kind": rng.choice(EVENT_KINDS),
            "at_ms": started + rng.randrange(600_000),
            "detail": {"g": round(rng.uniform(0.2, 0.9), 2), "speed_kmh": round(rng.uniform(10, 120), 1)},
        }
        for _ in range(rng.choice((0, 0, 1, 2)))
    ]
    driver = None if rng.random() < 0.2 else {"customer_id": rng.randrange(1, 90_000), "rating": None}
    return {
        "report_id": f"trip-{n:09d}",
        "exported_at": _iso(t + 1000),
        "device": {
            "device_id": f"dev-{car_id:06d}",
            "firmware": {
                "version": f"4.{rng.randint(0, 3)}.{rng.randint(0, 9)}",
                "build": {"number": rng.randrange(1000, 2000), "channel": "stable"},
            },
        },
        "car": {"car_id": car_id, "model": model, "fleet": fleet},
        "trip": {
            "started_at": _iso(started),
            "ended_at": _iso(t),
            "duration_s": (t - started) // 1000,
            "route": {
                "distance_km": f"{distance}" if drift else distance,
                "origin": {
                    "lat": round(rng.uniform(37.4, 37.7), 5),
                    "lon": round(rng.uniform(126.8, 127.2), 5),
                    "zone": {"id": f"z-{rng.randrange(40)}", "name": "Gangnam"},
                },
                "segments": segments,
            },
            "events": events,
            "driver": driver,
        },
        "battery": {
            "soc_start": round(rng.uniform(50, 95), 1),
            "cells_v": [round(rng.uniform(3.6, 3.8), 3) for _ in range(rng.randint(0, 4))],
        },
    }


def trip_reports(
    count: int,
    *,
    seed: int = 7,
    drift: bool = False,
    first: int = 0,
    start_ms: int = BASE_MS,
    cars: Sequence[Car] = (),
) -> Iterator[dict[str, Any]]:
    """``count`` reports numbered from ``first``; the same seed gives the same reports."""
    rng = random.Random(seed)
    for n in range(first, first + count):
        yield trip_report(rng, n, drift=drift, start_ms=start_ms, cars=cars)
