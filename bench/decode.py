"""Telemetry decoding, µs per event for each of the simulator's encodings, in one run (CPU time):

    python -m bench.decode [--cars 300 --times 20 --rounds 9]

Columns: ``orjson.loads`` alone (the floor of any decoder that builds Python objects), the Python decoder
(``decode_telemetry_py``), the Python decoder plus ``orjson.dumps(signals)`` (what the enriched event
then costs to encode), and the native decoder (which returns the signals' JSON too). Each figure is the
best of ``--rounds`` passes over the same messages, interleaved, so a noisy machine shifts all alike.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import orjson

from enrich import telemetry
from simulator.model import Encoding, Fleet, car_values, encode_signals

ENCODINGS: tuple[Encoding, ...] = ("nested", "flat", "flat-strings")


def corpus(encoding: Encoding, cars: int, times: int) -> list[bytes]:
    rng = random.Random(11)
    start = 1_700_000_000_000
    fleet = Fleet(rng, cars, 1, start)
    out = []
    for device in fleet.devices.values():
        car = fleet.cars[device.car_id]
        for i in range(times):
            t = start + i * 180_000 + rng.randrange(60_000)
            signals = encode_signals(car_values(car, t), encoding)
            out.append(orjson.dumps({"device_id": device.device_id, "ts": t, "seq": i, "signals": signals}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cars", type=int, default=300)
    ap.add_argument("--times", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    native = telemetry.load_native(honour_env=False)
    dumps, loads, py = orjson.dumps, orjson.loads, telemetry.decode_telemetry_py
    limit = telemetry.DEFAULT_MAX_BYTES
    ways: dict[str, Callable[[bytes], object]] = {
        "orjson.loads": loads,
        "python": lambda m: py(m, limit),
        "python+dumps": lambda m: dumps(py(m, limit).signals),
    }
    if native is not None:
        ways["native"] = lambda m: native(m, limit)
    print(f"telemetry decode, us per event (CPU, best of {args.rounds}); native: {native is not None}")
    print(f"  {'encoding':<13} {'bytes':>5} " + " ".join(f"{w:>13}" for w in ways) + "   py/native")
    for encoding in ENCODINGS:
        msgs = corpus(encoding, args.cars, args.times)
        best = dict.fromkeys(ways, float("inf"))
        for _ in range(args.rounds):
            for name, fn in ways.items():
                t0 = time.process_time()
                for m in msgs:
                    fn(m)
                best[name] = min(best[name], time.process_time() - t0)
        us = {name: s / len(msgs) * 1e6 for name, s in best.items()}
        ratio = f"{us['python+dumps'] / us['native']:9.2f}x" if "native" in us else ""
        size = sum(map(len, msgs)) // len(msgs)
        print(f"  {encoding:<13} {size:>5} " + " ".join(f"{v:13.2f}" for v in us.values()) + "  " + ratio)


if __name__ == "__main__":
    main()
