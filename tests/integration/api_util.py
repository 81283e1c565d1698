"""Helpers for API tests: keys, vehicle states written through the store's writer, an API process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import redis.asyncio as aioredis

from enrich.settings import Settings
from stack.procs import free_port, wait_until
from stores.apikeys import RedisApiKeyStore
from stores.vehicles import VehicleStateWrite
from stores.vehicles.redis_writer import RedisVehicleWriter


def create_key(s: Settings, name: str, **tags: str) -> str:
    async def go() -> str:
        client = aioredis.Redis.from_url(s.redis_url)
        try:
            _key, token = await RedisApiKeyStore(client, s.api_prefix).create(name, tags)
            return token
        finally:
            await client.aclose()

    return asyncio.run(go())


def car_row(car: int, environment: str, stage: str, fleet: str = "seoul", **more: Any) -> dict[str, Any]:
    return {
        "car_id": car,
        "plate": f"P{car}",
        "model": "Kia Ray",
        "fleet": fleet,
        "status": "ACTIVE",
        "zone": "Z01",
        "environment": environment,
        "stage": stage,
        "updated_at": 1,
        **more,
    }


def state_doc(
    car: int, row: dict[str, Any] | None, version: int = 1, last_seen: int = 1_000
) -> dict[str, Any]:
    return {
        "car_id": car,
        "last_seen": last_seen,
        "location": {"lat": 37.5, "lon": 127.0},
        "signals": {
            "Vehicle.Speed": {"value": 10.0, "ts": last_seen, "seq": version, "device_id": f"d{car}"}
        },
        "car": row,
        "reservation": None,
        "devices": [f"d{car}"],
        "updated_at": last_seen,
        "version": version,
    }


def write_states(
    s: Settings, docs: list[dict[str, Any]], outliers: list[dict[str, Any]] | None = None
) -> None:
    writer = RedisVehicleWriter(redis.Redis.from_url(s.redis_url), s.state_prefix)
    writer.write_batch({d["car_id"]: VehicleStateWrite(orjson.dumps(d), d) for d in docs}, outliers or [])


def outlier(iid: str, row: dict[str, Any], status: str = "firing", starts: int = 5_000) -> dict[str, Any]:
    return {
        "incident_id": iid,
        "fingerprint": "ab12",
        "rule_id": "headlights-left-on",
        "status": status,
        "severity": "warning",
        "car_id": row["car_id"],
        "device_id": None,
        "labels": {"fleet": row["fleet"]},
        "annotations": {"summary": "s"},
        "starts_at": starts,
        "ends_at": starts + 1 if status == "resolved" else None,
        "generated_at": starts,
        "snapshot": {"car": row, "reservation": None, "signals": {}},
    }


def cleanup(s: Settings) -> None:
    client = redis.Redis.from_url(s.redis_url)
    for prefix in (s.state_prefix, s.api_prefix, s.alerts_prefix, s.snapshot_prefix):
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])


@contextlib.contextmanager
def api_process(s: Settings, log: Path, **env: str) -> Iterator[str]:
    """``enrich api`` as a real server process (uvicorn) for this test; yields its base URL."""
    port = free_port()
    full = {**os.environ, **s.as_env(), **env}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--port", str(port)],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    try:
        assert wait_until(up, timeout=30), log.read_text()[-3000:]
        assert proc.poll() is None, log.read_text()[-3000:]
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
