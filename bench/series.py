"""Benchmark: what the recent-signal series (the console's charts) adds to the state writer, per car.

    python -m bench.series --vehicles 10000 --batch 2000 --rounds 6

The enrichment flow's state sink calls ``RedisVehicleWriter.write_batch`` once per micro-batch. Each round
rewrites every car (steady state, documents passed as dicts, as the flow does), with the series off
(``SeriesConfig(points=0)``), on with every car due a sample in every batch (event time moving 30 s per
round: the worst case, e.g. the simulator's compressed time), and on at real time (event time moving 5 s per
round: a car samples in one round of six). Rounds alternate between the three so machine noise hits all
alike; the figures are medians of µs per car (Python + the Redis round trip), and the ratios to "off".
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import orjson
import redis

from enrich.settings import Settings
from simulator.model import SIGNALS
from stores.vehicles import SeriesConfig, VehicleStateWrite
from stores.vehicles.redis_writer import RedisVehicleWriter


def doc(car: int, version: int, t: int) -> dict[str, Any]:
    sig = {name: {"value": 12.5, "ts": t, "seq": version, "device_id": f"dev-{car}"} for name in SIGNALS}
    return {
        "car_id": car,
        "last_seen": t,
        "location": {"lat": 37.5 + (car % 100) / 1000, "lon": 127.0 + (car % 77) / 1000},
        "signals": sig,
        "car": {
            "car_id": car,
            "plate": f"P{car}",
            "model": "Kia Ray",
            "fleet": "busan",
            "status": "ACTIVE",
            "zone": "Z01",
            "environment": "prod",
            "stage": "prod",
            "updated_at": 1,
        },
        "reservation": None,
        "devices": [f"dev-{car}"],
        "updated_at": t,
        "version": version,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vehicles", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    s = Settings()
    client = redis.Redis.from_url(s.redis_url)
    prefix = f"bench-series-{uuid.uuid4().hex[:6]}:"
    modes = {
        "off": (SeriesConfig(points=0), 30_000),
        "on, every car sampled": (SeriesConfig(), 30_000),
        "on, real time": (SeriesConfig(), 5_000),
    }
    writers = {
        m: RedisVehicleWriter(client, f"{prefix}{i}:", series=cfg)
        for i, (m, (cfg, _)) in enumerate(modes.items())
    }
    cars = list(range(1000, 1000 + args.vehicles))
    t0 = int(time.time() * 1000) - 86_400_000
    results: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for r in range(args.rounds + 1):
            for mode, (_cfg, step) in modes.items():
                docs = {c: doc(c, r + 1, t0 + r * step) for c in cars}
                bodies = {c: orjson.dumps(d) for c, d in docs.items()}
                start = time.perf_counter()
                for i in range(0, len(cars), args.batch):
                    part = cars[i : i + args.batch]
                    writers[mode].write_batch({c: VehicleStateWrite(bodies[c], docs[c]) for c in part})
                if r > 0:  # round 0 is the first write of every car (indexes), not the steady state
                    results[mode].append((time.perf_counter() - start) / len(cars) * 1e6)
        base = statistics.median(results["off"])
        for mode, values in results.items():
            med = statistics.median(values)
            print(f"{mode:<24} {med:6.2f} µs per car per batch   ratio to off {med / base:.2f}", flush=True)
        samples = client.llen(f"{prefix}1:series:{cars[0]}")
        print(f"(series kept per car after {args.rounds + 1} rounds: {samples})")
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
        for i in range(0, len(keys), 5000):
            client.delete(*keys[i : i + 5000])


if __name__ == "__main__":
    main()
