"""The operators' console (static files served at ``/``) and the route its charts read.

The console is a page and a few small scripts shipped in the package (``api/console/``): no CDN, no map
tiles, nothing fetched from elsewhere. Everything it shows comes from the ``/v1`` routes with the key the
operator enters, so the access policies apply to it exactly as to any other client; the server gives the
page no data of its own.

``GET /v1/vehicles/{car_id}/history`` — the vehicle's recent samples of speed, 12 V battery and charge /
fuel level, from the bounded per-car series the state writer keeps in Redis (``stores.vehicles.model.
SeriesConfig``: one sample per 30 s of the car's event time, the newest 120, so one hour). Authorised like
``GET /v1/vehicles/{car_id}`` (``vehicles:Get``; a hidden vehicle is a 404). Longer or finer history is in
the Parquet history: ``enrich sql --example signal-history -p car=…``.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Query
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from api.deps import Key, Svc, strict_query
from api.models import VehicleHistory
from api.problems import COMMON, Problem, problem
from stores.vehicles import SeriesConfig, tags_of
from stores.vehicles.model import parse_series

STATIC = FsPath(__file__).parent / "console"
SERIES = SeriesConfig()
MAX_ID = 2**53 - 1
# The page runs only its own scripts and talks only to this server.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(prefix="/v1", dependencies=[Depends(strict_query)], tags=["vehicles"])


@router.get(
    "/vehicles/{car_id}/history",
    summary="Recent signal history of a vehicle (the console's charts)",
    response_model=VehicleHistory,
    responses={404: problem(404, "No such vehicle, or not visible", "vehicle 7 not found"), **COMMON},
)
async def vehicle_history(
    car_id: Annotated[int, Path(ge=0, le=MAX_ID, examples=[1042])],
    svc: Svc,
    key: Key,
    minutes: Annotated[
        int, Query(ge=1, le=1440, description="How far back from the newest sample (kept: about one hour)")
    ] = 60,
) -> Response:
    """Speed, 12 V battery voltage and traction-battery charge / fuel level of the vehicle, one sample per
    30 s of its event time, oldest first, ending at its newest sample."""
    found = await svc.vehicles.vehicle(car_id)
    tags = tags_of(orjson.loads(found[0]).get("car")) if found is not None else {}
    if found is None or not svc.allowed(key, "vehicles:Get", tags):
        raise Problem(404, f"vehicle {car_id} not found")
    raws = await svc.vehicles.series(car_id)
    times, cols = parse_series(raws, SERIES.signals)
    if times:
        cut = times[-1] - minutes * 60_000
        first = next(i for i, t in enumerate(times) if t >= cut)
        times = times[first:]
        cols = {name: values[first:] for name, values in cols.items()}
    body: dict[str, Any] = {"car_id": car_id, "step_ms": SERIES.step_ms, "ts": times, "signals": cols}
    return Response(orjson.dumps(body), media_type="application/json")


def install(app: FastAPI) -> None:
    """The console: ``/`` (the page) and ``/console/…`` (its scripts and styles)."""
    app.include_router(router)
    app.mount("/console", StaticFiles(directory=STATIC), name="console")

    @app.get("/", include_in_schema=False)
    async def console_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)
