"""Helpers for the console's browser tests: Debian's Chromium driven by playwright, and a simulated fleet's
state documents written through the vehicle store's real writer (what the enrichment flow's sink calls)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from enrich.settings import Settings
from simulator.model import Fleet, car_signals
from stores.vehicles import VehicleStateWrite
from stores.vehicles.redis_writer import RedisVehicleWriter

CHROMIUM = os.environ.get("ENRICH_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("ENRICH_TEST_ARTIFACTS", "test-artifacts"))


def require_chromium() -> None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        msg = f"Chromium not found at {CHROMIUM} (scripts/bootstrap installs Debian's chromium)"
        if os.environ.get("ENRICH_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium (a fresh profile per launch) under playwright."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


class FleetWriter:
    """The simulator's fleet model as vehicle-state documents, written in batches by the store's writer."""

    def __init__(self, s: Settings, vehicles: int, seed: int = 7) -> None:
        self.now = int(time.time() * 1000)
        self.fleet = Fleet(random.Random(seed), vehicles, 1, self.now - 3_600_000)
        self.writer = RedisVehicleWriter(redis.Redis.from_url(s.redis_url), s.state_prefix)
        self.version: dict[int, int] = {}
        self.device = {d.car_id: d.device_id for d in self.fleet.devices.values()}

    def doc(self, car_id: int, t_ms: int) -> dict[str, Any]:
        car = self.fleet.cars[car_id]
        dev = self.device[car_id]
        version = self.version[car_id] = self.version.get(car_id, 0) + 1
        signals = {k: {"value": v, "ts": t_ms, "seq": version, "device_id": dev}
                   for k, v in car_signals(car, t_ms).items()}  # fmt: skip
        lat = signals["Vehicle.CurrentLocation.Latitude"]["value"]
        lon = signals["Vehicle.CurrentLocation.Longitude"]["value"]
        rid = self.fleet.active_reservation.get(car_id)
        return {
            "car_id": car_id,
            "last_seen": t_ms,
            "location": {"lat": lat, "lon": lon},
            "signals": signals,
            "car": car.row(self.now - 86_400_000),
            "reservation": self.fleet.reservations[rid].row() if rid is not None else None,
            "devices": [dev],
            "updated_at": int(time.time() * 1000),
            "version": version,
        }

    def write(self, cars: list[int], t_ms: int, outliers: list[dict[str, Any]] | None = None) -> None:
        import orjson

        docs = {c: self.doc(c, t_ms) for c in cars}
        self.writer.write_batch(
            {c: VehicleStateWrite(orjson.dumps(d), d) for c, d in docs.items()}, outliers or []
        )

    def fill(self, t_ms: int, batch: int = 1000) -> None:
        cars = sorted(self.fleet.cars)
        for i in range(0, len(cars), batch):
            self.write(cars[i : i + batch], t_ms)
