"""Reads behind the HTTP API (kept out of the route handlers)."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from enrich.settings import Settings


async def vehicle_state(client: aioredis.Redis, settings: Settings, car_id: int) -> dict[str, Any] | None:
    raw = await client.get(f"{settings.state_prefix}car:{car_id}")
    return orjson.loads(raw) if raw is not None else None


async def vehicle_states(
    client: aioredis.Redis, settings: Settings, car_ids: list[int]
) -> list[dict[str, Any]]:
    if not car_ids:
        return []
    raws = await client.mget([f"{settings.state_prefix}car:{c}" for c in car_ids])
    return [orjson.loads(r) for r in raws if r is not None]


async def list_car_ids(
    client: aioredis.Redis, settings: Settings, *, cursor: int, limit: int
) -> tuple[list[int], int]:
    """A page of car ids with a state (SCAN order; ``next`` 0 = done)."""
    prefix = f"{settings.state_prefix}car:"
    ids: list[int] = []
    while True:
        cursor, keys = await client.scan(cursor=cursor, match=f"{prefix}*", count=max(limit, 100))
        ids += [int(k.decode()[len(prefix) :]) for k in keys if isinstance(k, bytes)]
        if cursor == 0 or len(ids) >= limit:
            return sorted(ids), cursor


async def delivery_log(client: aioredis.Redis, settings: Settings, incident_id: str) -> dict[str, Any]:
    raw: dict[Any, Any] = await client.hgetall(f"{settings.alerts_prefix}log:{incident_id}")
    return {bytes(k).decode(): orjson.loads(v) for k, v in raw.items()}
