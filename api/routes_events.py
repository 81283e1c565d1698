"""Server-sent events: ``/v1/vehicles/{car_id}/events`` and ``/v1/events`` (see ``api.sse``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import Key, Services, Svc, key_of, strict_query
from api.problems import COMMON, Problem, problem
from api.sse import Interest
from stores.vehicles import tags_of

router = APIRouter(prefix="/v1", dependencies=[Depends(strict_query)], tags=["events"])
LAST_EVENT_ID = r"^[0-9]{1,20}-[0-9]{1,20}(\.[0-9]{1,9})?$"
SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A text/event-stream: `event: state` (data = the vehicle-state document), "
        "`event: incident` (data = incident summary), `event: reset` (events were lost: re-read state). "
        "Each event has an `id`; reconnect with `Last-Event-ID` to resume.",
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "example": 'id: 1718000060000-0.0\nevent: state\ndata: {"car_id": 1042, "version": 58}\n\n',
            }
        },
    }
}


def _still_valid(svc: Services, request: Request) -> Callable[[], Awaitable[bool]]:
    header = request.headers.get("authorization", "")

    async def check() -> bool:
        try:
            await key_of(svc, header)
            return True
        except Problem:
            return False

    return check


HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", pattern=LAST_EVENT_ID, max_length=50)]


@router.get(
    "/vehicles/{car_id}/events",
    summary="Live state changes and incidents of one vehicle",
    response_class=StreamingResponse,
    responses={
        **SSE_DOC,
        404: problem(404, "No such vehicle, or not visible", "vehicle 7 not found"),
        **COMMON,
    },
)
async def vehicle_events(
    car_id: Annotated[int, Path(ge=0, le=2**53 - 1)],
    request: Request,
    svc: Svc,
    key: Key,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    found = await svc.vehicles.vehicle(car_id)
    tags = tags_of(orjson.loads(found[0]).get("car")) if found is not None else {}
    if found is None or not svc.allowed(key, "vehicles:Get", tags):
        raise Problem(404, f"vehicle {car_id} not found")
    stream = svc.broker.stream(Interest(key, car_id=car_id), last_event_id, _still_valid(svc, request))
    return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)


@router.get(
    "/events",
    summary="Live state changes and incidents of every vehicle the key may list",
    response_class=StreamingResponse,
    responses={**SSE_DOC, **COMMON},
)
async def fleet_events(
    request: Request,
    svc: Svc,
    key: Key,
    fleet: Annotated[str | None, Query(pattern=r"^[^\x00-\x1f\x7f]{1,64}$")] = None,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    stream = svc.broker.stream(Interest(key, fleet=fleet), last_event_id, _still_valid(svc, request))
    return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)
