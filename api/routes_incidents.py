"""``/v1/incidents``, ``/v1/silences`` and ``/v1/rules``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from alerts.errors import AlertsError
from api.alerts_adapter import SilenceDoc, delivery_log
from api.cursor import CursorError
from api.deps import Key, Svc, strict_query
from api.models import IncidentDetail, IncidentPage, Rule, Silence, SilenceIn
from api.problems import COMMON, Problem, problem
from enrich.rules.model import RuleError, parse_duration
from stores.vehicles import IncidentQuery
from stores.vehicles.model import TAG_COLUMNS

router = APIRouter(prefix="/v1", dependencies=[Depends(strict_query)])
MAX_TS = 2**53 - 1
INCIDENT_ID = r"^[A-Za-z0-9._:@-]{1,200}$"
MAX_SILENCE_MS = 90 * 86_400_000


@router.get(
    "/incidents",
    tags=["incidents"],
    summary="List incidents (newest first)",
    response_model=IncidentPage,
    responses={400: problem(400, "Bad cursor", "malformed cursor"), **COMMON},
)
async def list_incidents(
    svc: Svc,
    key: Key,
    status: Literal["firing", "resolved"] | None = None,
    rule: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = None,
    car_id: Annotated[int | None, Query(ge=0, le=MAX_TS)] = None,
    since: Annotated[int | None, Query(ge=0, le=MAX_TS, description="starts_at >= since (epoch ms)")] = None,
    until: Annotated[int | None, Query(ge=0, le=MAX_TS, description="starts_at < until (epoch ms)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> Response:
    """Incidents of vehicles the key may see (by the vehicle's tags when the incident started)."""
    ident: dict[str, Any] = {"status": status, "rule": rule, "car": car_id, "since": since, "until": until}
    after = None
    if cursor is not None:
        try:
            after = svc.cursors.decode(cursor, "incidents", ident)
        except CursorError as exc:
            raise Problem(400, str(exc)) from None
    allowed = await svc.allowed_classes(key, "incidents:List")
    q = IncidentQuery(status, rule, car_id, since, until)
    page = await svc.vehicles.list_incidents(q, allowed, after, limit)
    svc.metrics.scanned.labels("incidents").observe(page.scanned)
    nxt = svc.cursors.encode("incidents", page.next_after, ident) if page.next_after is not None else None
    body = b'{"items":[' + b",".join(page.items) + b'],"next_cursor":' + orjson.dumps(nxt) + b"}"
    return Response(body, media_type="application/json")


@router.get(
    "/incidents/{incident_id}",
    tags=["incidents"],
    summary="An incident and its delivery log",
    response_model=IncidentDetail,
    responses={
        404: problem(404, "No such incident, or not visible to this key", "incident x not found"),
        **COMMON,
    },
)
async def get_incident(
    incident_id: Annotated[
        str, Path(pattern=INCIDENT_ID, examples=["headlights-left-on:1042:1718000300000"])
    ],
    svc: Svc,
    key: Key,
) -> Any:
    raw = await svc.vehicles.incident(incident_id)
    record = orjson.loads(raw) if raw is not None else None
    if record is None or not svc.allowed(key, "incidents:Get", record.get("tags") or {}):
        raise Problem(404, f"incident {incident_id} not found")
    record["deliveries"] = await delivery_log(svc.redis, svc.settings.alerts_prefix, incident_id)
    return Response(orjson.dumps(record), media_type="application/json")


def _silence(doc: SilenceDoc, now_ms: int) -> dict[str, Any]:
    return {
        "id": doc.id,
        "matchers": doc.matchers,
        "starts_at": doc.starts_at,
        "ends_at": doc.ends_at,
        "created_by": doc.created_by,
        "comment": doc.comment,
        "tags": doc.tags(TAG_COLUMNS),
        "active": doc.active(now_ms),
    }


def _now() -> int:
    import time

    return int(time.time() * 1000)


@router.get(
    "/silences",
    tags=["silences"],
    summary="Silences the key may see",
    response_model=list[Silence],
    responses=COMMON,
)
async def list_silences(svc: Svc, key: Key) -> Any:
    now = _now()
    return [
        _silence(d, now)
        for d in await svc.silences.all()
        if svc.allowed(key, "silences:List", d.tags(TAG_COLUMNS))
    ]


@router.post(
    "/silences",
    tags=["silences"],
    status_code=201,
    summary="Create a silence",
    response_model=Silence,
    responses={
        403: problem(
            403,
            "The policies do not allow a silence with these tags",
            'not allowed to create a silence with tags {"environment": "prod"}',
        ),
        400: problem(400, "The body is not JSON", "There was an error parsing the body"),
        413: problem(413, "The body is larger than 16 KiB", "request body over 16384 bytes"),
        **COMMON,
    },
)
async def create_silence(body: SilenceIn, svc: Svc, key: Key) -> Any:
    """Mute alerts matching every matcher for ``duration``. The silence's tags (its equality matchers on
    environment, stage, fleet) must be allowed by the policies (``silences:Create``): with the shipped
    policies, a key may only create silences that request its own environment."""
    try:
        duration = parse_duration(body.duration)
        probe = SilenceDoc("", body.matchers, 0, 0, "", "")
        tags = probe.tags(TAG_COLUMNS)
    except (AlertsError, RuleError, ValueError) as exc:
        raise Problem(422, str(exc)) from None
    if not 0 < duration <= MAX_SILENCE_MS:
        raise Problem(422, "duration: between 1 ms and 90 days")
    if not svc.allowed(key, "silences:Create", tags):
        raise Problem(403, f"not allowed to create a silence with tags {orjson.dumps(tags).decode()}")
    doc = await svc.silences.add(body.matchers, duration, created_by=key.name, comment=body.comment)
    return _silence(doc, _now())


@router.delete(
    "/silences/{silence_id}",
    tags=["silences"],
    status_code=204,
    summary="Expire a silence",
    responses={
        404: problem(404, "No such silence, or not visible to this key", "silence x not found"),
        403: problem(403, "Visible but the policies do not allow deleting it", "not allowed"),
        **COMMON,
    },
)
async def delete_silence(
    silence_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")], svc: Svc, key: Key
) -> Response:
    doc = await svc.silences.get(silence_id)
    tags = doc.tags(TAG_COLUMNS) if doc is not None else {}
    if doc is None or not svc.allowed(key, "silences:List", tags):
        raise Problem(404, f"silence {silence_id} not found")
    if not svc.allowed(key, "silences:Delete", tags):
        raise Problem(403, f"not allowed to delete silence {silence_id}")
    await svc.silences.expire(silence_id)
    return Response(status_code=204)


@router.get(
    "/rules",
    tags=["rules"],
    summary="The outlier rules in force",
    response_model=list[Rule],
    responses=COMMON,
)
async def list_rules(svc: Svc, key: Key) -> Any:
    """The rule pack the enrichment flow evaluates (any valid key may read it)."""
    return [
        {
            "id": r.id,
            "summary": r.summary,
            "description": r.description,
            "when": r.condition.source,
            "for_ms": r.for_ms,
            "keep_firing_for_ms": r.keep_firing_for_ms,
            "severity": r.severity,
            "labels": r.labels,
        }
        for r in svc.rules
    ]
