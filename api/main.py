"""``enrich api``: the HTTP API, v1.

Routes (all under ``/v1`` need ``Authorization: Bearer <key>``; see the OpenAPI document at ``/openapi.json``
and ``/docs``): vehicles (state, filtered pages, SSE), devices, incidents (with delivery log), silences,
rules. Unauthenticated: ``/healthz`` (the process answers), ``/readyz`` (Redis and Kafka reachable),
``/metrics`` (Prometheus).

Start-up builds everything once: the one async Redis client of the process, the Cedar policies (a policy
file with an error refuses to start, naming its line), the stores, the SSE broker. ``api/`` imports nothing
from ``cli/`` or ``flows/``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from api import problems, routes_console, routes_events, routes_incidents, routes_vehicles
from api.alerts_adapter import Silences
from api.cursor import Cursors
from api.deps import Services
from api.metrics import ApiMetrics, BodyLimit, MetricsMiddleware
from api.models import Health, Ready
from api.policy import Policies, load_policy_files
from api.readiness import kafka_admin, readiness
from api.sse import Broker
from enrich.rules.model import load_rules
from enrich.settings import Settings, get_settings
from enrich.tables import load_model
from stores.apikeys import RedisApiKeyStore
from stores.redis_client import API_SOCKET_TIMEOUT_S, RETRY_ON, api_client
from stores.snapshot_reader import AsyncSnapshotReader
from stores.vehicles.redis_reader import RedisVehicleReader

KAFKA_CHECK_TTL_S = 5.0


async def _cursor_secret(client: aioredis.Redis, prefix: str) -> bytes:
    """One cursor key shared by every API process on this Redis (cursors work across replicas)."""
    key = f"{prefix}cursor-secret"
    await client.set(key, secrets.token_hex(32), nx=True)
    value: Any = await client.get(key)
    return bytes(value)


BROKER_SOCKET_TIMEOUT_S = 15.0


def _broker_client(s: Settings) -> aioredis.Redis:
    """The event broker's own connection. Its XREAD blocks up to a second, so on a loaded machine a read
    can outlast the API's 2 s command timeout; a spurious timeout there (then retries, then the broker's
    back-off) held every open event stream back by seconds. Requests keep the short timeout."""
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import ExponentialWithJitterBackoff

    retry = AsyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2, RETRY_ON)  # type: ignore[arg-type]
    return aioredis.Redis.from_url(
        s.redis_url,
        retry=retry,
        retry_on_error=list(RETRY_ON),
        socket_timeout=BROKER_SOCKET_TIMEOUT_S,
        socket_connect_timeout=API_SOCKET_TIMEOUT_S,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    s: Settings = app.state.settings
    model = load_model(s.tables_file)
    client = api_client(s)
    app.state.kafka_admin = kafka_admin(s)
    svc = Services(
        settings=s,
        redis=client,
        vehicles=RedisVehicleReader(client, s.state_prefix),
        keys=RedisApiKeyStore(client, s.api_prefix),
        policies=app.state.policies,
        silences=Silences(client, s.alerts_prefix),
        snapshot=AsyncSnapshotReader(client, model, s.snapshot_prefix),
        cursors=Cursors(await _cursor_secret(client, s.api_prefix)),
        rules=load_rules(s.rules_file, model.attribute_roles),
        metrics=app.state.metrics,
    )
    stream_client = _broker_client(s)
    svc.broker = Broker(RedisVehicleReader(stream_client, s.state_prefix), svc.policies)
    await svc.broker.start()
    app.state.services = svc
    try:
        yield
    finally:
        await svc.broker.stop()
        await stream_client.aclose()
        await client.aclose()


def create_app(settings: Settings | None = None, policies: Policies | None = None) -> FastAPI:
    """The app; raises ``api.policy.PolicyError`` when the policy file is not valid."""
    s = settings or get_settings()
    app = FastAPI(
        title="fleet-enrich API",
        version="1.0.0",
        lifespan=lifespan,
        description=__doc__,
        openapi_tags=[
            {"name": "vehicles", "description": "Latest vehicle state, served from indexes"},
            {"name": "events", "description": "Server-sent events, resumable with Last-Event-ID"},
            {"name": "ops", "description": "Health, readiness and metrics (no key needed)"},
        ],
    )
    app.state.settings = s
    app.state.policies = policies or load_policy_files(s.api_policies, s.api_policy_schema)
    app.state.metrics = ApiMetrics()
    app.state.kafka = (0.0, False)
    problems.install(app)
    app.add_middleware(BodyLimit, limit=16_384)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.include_router(routes_vehicles.hot)
    app.include_router(routes_vehicles.router)
    app.include_router(routes_incidents.router)
    app.include_router(routes_events.router)
    _ops(app)
    routes_console.install(app)  # last: its static mount must not shadow a route
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = problems.PROBLEM_SCHEMA
    # FastAPI documents its own 422 body; ours is a problem (RFC 9457)
    for path in doc.get("paths", {}).values():
        for op in path.values():
            resp = op.get("responses", {})
            if "422" in resp:
                resp["422"] = problems.COMMON[422]
    doc["components"]["schemas"].pop("HTTPValidationError", None)
    doc["components"]["schemas"].pop("ValidationError", None)
    app.openapi_schema = doc
    return doc


def _ops(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"], response_model=Health, summary="The process answers")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        response_model=Ready,
        summary="Redis and Kafka reachable",
        responses={503: {"description": "Not ready", "model": Ready}},
    )
    async def readyz(request: Request) -> Any:
        svc: Services = request.app.state.services
        body = await readiness(svc.redis, request.app.state.kafka_admin)
        if not body["ready"]:
            import orjson

            return Response(orjson.dumps(body), status_code=503, media_type="application/json")
        return body

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        m: ApiMetrics = request.app.state.metrics
        svc: Services | None = getattr(request.app.state, "services", None)
        if svc is not None and svc.broker is not None:
            m.sse_clients.set(svc.broker.clients)
        # the API's own metrics, then the process's (dependency health: enrich_dependency_up, ...)
        return Response(
            generate_latest(m.registry) + generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST
        )
