"""``/v1/vehicles`` and ``/v1/devices``: latest state, filtered pages from the indexes, merged device records.

A vehicle that does not exist and one the key may not see answer the same 404, so a key learns nothing
about vehicles outside its access (no ids, no counts)."""

from __future__ import annotations

import zlib
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from api.cursor import CursorError
from api.deps import Key, Services, Svc, key_of, strict_query
from api.models import Device, VehicleDetail, VehiclePage, VehicleSummaryPage
from api.problems import COMMON, Problem, problem
from stores.vehicles import BBox, VehicleQuery, tags_of

router = APIRouter(prefix="/v1", dependencies=[Depends(strict_query)], tags=["vehicles"])
hot = APIRouter(prefix="/v1", tags=["vehicles"])  # GET by id: no dependency injection at all (see there)
MAX_ID = 2**53 - 1
TEXT = r"^[^\x00-\x1f\x7f]{1,64}$"
NOT_FOUND: dict[str, Any] = problem(
    404, "No such vehicle, or not visible to this key (the same answer for both)", "vehicle 1042 not found"
)
JSON = "application/json"

Text = Annotated[str | None, Query(pattern=TEXT, max_length=64)]


def _etag(version: int, incidents: list[bytes]) -> str:
    return f'"{version}-{zlib.crc32(b"|".join(incidents)):08x}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


GET_VEHICLE_DOC: dict[str, Any] = {
    "security": [{"ApiKey": []}],
    "parameters": [
        {"name": "car_id", "in": "path", "required": True, "description": "carinfo.car_id",
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "example": 1042},
        {"name": "if-none-match", "in": "header", "required": False,
         "schema": {"type": "string", "maxLength": 200}},
    ],
}  # fmt: skip


@hot.get(
    "/vehicles/{car_id}",
    summary="Latest state of a vehicle",
    response_model=VehicleDetail,
    responses={
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        404: NOT_FOUND,
        **COMMON,
    },
    openapi_extra=GET_VEHICLE_DOC,
)
async def get_vehicle(request: Request) -> Response:
    """The vehicle's latest state (signals, location, car and child rows), its resource tags and its
    firing incidents. ``ETag`` changes with every state write and incident change; send it back in
    ``If-None-Match`` for a 304.

    The hot path of the API: parameters are read by hand (same bounds as declared) instead of through
    FastAPI's dependency injection, which would cost more than the Redis call."""
    svc: Services = request.app.state.services
    key = await key_of(svc, request.headers.get("authorization"))
    if request.query_params:
        await strict_query(request)  # no query parameters here: a 422 naming them
    raw = request.path_params["car_id"]
    if not (raw.isdigit() and len(raw) <= 16 and int(raw) <= MAX_ID):
        msg = f"an integer from 0 to {MAX_ID}"
        raise Problem(422, f"path.car_id: {msg}", errors=[{"field": "path.car_id", "message": msg}])
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and len(if_none_match) > 200:
        msg = "at most 200 characters"
        raise Problem(
            422, f"header.if-none-match: {msg}", errors=[{"field": "header.if-none-match", "message": msg}]
        )
    car_id = int(raw)
    found = await svc.vehicles.vehicle(car_id)
    doc = orjson.loads(found[0]) if found is not None else None
    tags = tags_of(doc.get("car")) if doc is not None else {}
    if found is None or doc is None or not svc.allowed(key, "vehicles:Get", tags):
        raise Problem(404, f"vehicle {car_id} not found")
    body, incidents = found
    etag = _etag(int(doc.get("version") or 0), incidents)
    if _matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    out = (
        body[:-1] + b',"tags":' + orjson.dumps(tags) + b',"active_incidents":[' + b",".join(incidents) + b"]}"
    )
    return Response(out, media_type=JSON, headers={"ETag": etag})


def _bbox(text: str | None) -> BBox | None:
    if text is None:
        return None
    try:
        s, w, n, e = (float(x) for x in text.split(","))
    except ValueError:
        raise Problem(422, "bbox: give south,west,north,east in degrees") from None
    if not (-90 <= s <= n <= 90 and -180 <= w <= e <= 180):
        raise Problem(422, "bbox: need -90 <= south <= north <= 90 and -180 <= west <= east <= 180")
    return BBox(s, w, n, e)


@router.get(
    "/vehicles",
    summary="List vehicles (filtered, paged)",
    response_model=VehiclePage | VehicleSummaryPage,
    responses={
        400: problem(
            400,
            "The cursor is malformed, tampered with or from other filters",
            "this cursor belongs to another query (filters changed)",
        ),
        **COMMON,
    },
)
async def list_vehicles(
    svc: Svc,
    key: Key,
    fleet: Text = None,
    model: Text = None,
    status: Annotated[str | None, Query(pattern=r"^(ACTIVE|MAINTENANCE|RETIRED)$")] = None,
    environment: Text = None,
    has_active_incident: bool | None = None,
    last_seen_after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="epoch ms, exclusive")] = None,
    last_seen_before: Annotated[int | None, Query(ge=0, le=MAX_ID, description="epoch ms, exclusive")] = None,
    bbox: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=r"^[0-9eE.,+-]+$",
            description="south,west,north,east (degrees)",
            examples=["37.45,126.85,37.65,127.15"],
        ),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=5000, description="Page size: at most 500 documents, or 5000 with view=summary")
    ] = 50,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    view: Annotated[
        Literal["full", "summary"],
        Query(description="`full`: state documents; `summary`: the fields a fleet overview needs"),
    ] = "full",
) -> Response:
    """Vehicles the key may see, in car id order, that match every filter given. Served from indexes the
    enrichment flow maintains (no keyspace scans); access is decided once per tag class."""
    equal = {
        k: v
        for k, v in (("fleet", fleet), ("model", model), ("status", status), ("environment", environment))
        if v is not None
    }
    q = VehicleQuery(equal, has_active_incident, last_seen_after, last_seen_before, _bbox(bbox))
    ident: dict[str, Any] = {
        **equal,
        "active": has_active_incident,
        "after": last_seen_after,
        "before": last_seen_before,
        "bbox": bbox,
    }
    after = None
    if cursor is not None:
        try:
            after = svc.cursors.decode(cursor, "vehicles", ident)
        except CursorError as exc:
            raise Problem(400, str(exc)) from None
    allowed = await svc.allowed_classes(key, "vehicles:List")
    if view == "full":
        limit = min(limit, 500)
    page = await svc.vehicles.list_vehicles(q, allowed, after, limit, summary=view == "summary")
    svc.metrics.scanned.labels("vehicles").observe(page.scanned)
    nxt = svc.cursors.encode("vehicles", page.next_after, ident) if page.next_after is not None else None
    body = b'{"items":[' + b",".join(page.items) + b'],"next_cursor":' + orjson.dumps(nxt) + b"}"
    return Response(body, media_type=JSON)


@router.get(
    "/devices/{device_id}",
    summary="A device with its car and the car's chosen child rows, now or as of an event time",
    response_model=Device,
    tags=["devices"],
    responses={
        404: problem(
            404, "No such device, or its car is not visible to this key", "device dev-000042 not found"
        ),
        **COMMON,
    },
)
async def get_device(
    device_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", examples=["dev-000042"])],
    svc: Svc,
    key: Key,
    at: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="As of this event time, epoch ms (default: now)")
    ] = None,
) -> Any:
    """The device's row joined with its car's and the car's child rows (one field per child role of the
    join model), from the snapshot — as an event of time ``at`` would be joined. Visible when the key may
    ``vehicles:Get`` the device's car (then)."""
    timeline = await svc.snapshot.lookup(device_id)
    merged = timeline.latest if at is None else timeline.at(at)
    device, car = merged.rows.get("device"), merged.rows.get("car")
    if device is None or not svc.allowed(key, "vehicles:Get", tags_of(car)):
        raise Problem(404, f"device {device_id} not found")
    return {"device_id": device_id, "at": at, **merged.rows, "devices": merged.devices,
            "positions": merged.positions}  # fmt: skip
