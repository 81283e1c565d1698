"""``enrich api``: FastAPI app serving the latest vehicle state and merged snapshot records from Redis.

GET /vehicles/{car_id}            latest state (ETag = version; 304 on If-None-Match)
GET /vehicles?cursor=0&limit=100  a page of vehicle states
GET /devices/{device_id}/record   merged device + car + active reservation from the snapshot
GET /healthz                      the process serves; Redis reachable
GET /readyz                       200 when Redis and Kafka answer, else 503 naming what is down
GET /metrics                      Prometheus metrics (enrich_dependency_up, ...)

Redis errors answer 503 (the client retries twice briefly, then gives up: stores/redis_client.api_client).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app

from api import queries
from api.models import Delivery, Health, Readiness, SnapshotRecord, VehiclePage, VehicleState
from api.readiness import kafka_admin, readiness
from enrich.settings import Settings, get_settings
from stores.redis_client import api_client


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.redis = api_client(settings)
    app.state.kafka_admin = kafka_admin(settings)
    try:
        yield
    finally:
        await app.state.redis.aclose()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="fleet-enrich", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings or get_settings()
    _routes(app)
    app.mount("/metrics", make_asgi_app())

    @app.exception_handler(aioredis.RedisError)
    async def redis_unavailable(_request: Request, exc: aioredis.RedisError) -> JSONResponse:
        return JSONResponse({"detail": f"redis unavailable: {exc}"}, status_code=503)

    return app


def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def _routes(app: FastAPI) -> None:
    @app.get("/vehicles/{car_id}", response_model=VehicleState)
    async def get_vehicle(
        car_id: int,
        client: RedisDep,
        settings: SettingsDep,
        response: Response,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Any:
        state = await queries.vehicle_state(client, settings, car_id)
        if state is None:
            raise HTTPException(404, f"no state for car {car_id}")
        etag = f'"{state["version"]}"'
        if if_none_match == etag:
            return Response(status_code=304, headers={"ETag": etag})
        response.headers["ETag"] = etag
        return state

    @app.get("/vehicles", response_model=VehiclePage)
    async def list_vehicles(
        client: RedisDep,
        settings: SettingsDep,
        cursor: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Any:
        ids, nxt = await queries.list_car_ids(client, settings, cursor=cursor, limit=limit)
        return {"items": await queries.vehicle_states(client, settings, ids), "next_cursor": nxt}

    @app.get("/devices/{device_id}/record", response_model=SnapshotRecord)
    async def device_record(device_id: str, settings: SettingsDep) -> Any:
        from cli.flows import snapshot_store

        store = snapshot_store(settings, wait=False)  # one Lua call; run it off the event loop
        merged = (await asyncio.to_thread(store.lookup, "deviceinfo", [device_id]))[device_id]
        if merged.rows.get("deviceinfo") is None:
            raise HTTPException(404, f"device {device_id} is not in the snapshot")
        return {"rows": merged.rows, "positions": merged.positions}

    @app.get("/incidents/{incident_id}/deliveries", response_model=dict[str, Delivery])
    async def deliveries(incident_id: str, client: RedisDep, settings: SettingsDep) -> Any:
        """The delivery log of an incident: per receiver, status, attempts, last error."""
        log = await queries.delivery_log(client, settings, incident_id)
        if not log:
            raise HTTPException(404, f"no deliveries for incident {incident_id}")
        return log

    @app.get("/healthz", response_model=Health)
    async def health(client: RedisDep) -> Any:
        try:
            return {"redis": bool(await client.ping())}
        except aioredis.RedisError:
            raise HTTPException(503, "redis unreachable") from None

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def ready(client: RedisDep, request: Request) -> Any:
        """200 when Redis and Kafka both answer; 503 with the names of those that do not."""
        state = await readiness(client, request.app.state.kafka_admin)
        return JSONResponse(state, status_code=200 if state["ready"] else 503)
