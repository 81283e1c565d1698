"""Request and response models of the HTTP API (``schemas/vehicle-state.v1`` for the state document),
with the examples the OpenAPI document shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CAR: Any = {
    "car_id": 1042,
    "plate": "12가3456",
    "model": "Kia Niro EV",
    "fleet": "seoul-gangnam",
    "status": "ACTIVE",
    "zone": "Z07",
    "environment": "beta",
    "stage": "pilot",
    "updated_at": 1718000000000,
}
STATE: Any = {
    "car_id": 1042,
    "last_seen": 1718000060000,
    "location": {"lat": 37.5, "lon": 127.03},
    "signals": {"Vehicle.Speed": {"value": 42.0, "ts": 1718000060000, "seq": 981, "device_id": "dev-000042"}},
    "car": CAR,
    "reservation": None,
    "devices": ["dev-000042"],
    "updated_at": 1718000060042,
    "version": 57,
}
INCIDENT: Any = {
    "incident_id": "headlights-left-on:1042:1718000300000",
    "fingerprint": "9f2c4b1a7d3e8f60",
    "rule_id": "headlights-left-on",
    "status": "firing",
    "severity": "warning",
    "car_id": 1042,
    "device_id": "dev-000042",
    "labels": {"alertname": "headlights-left-on", "fleet": "seoul-gangnam"},
    "annotations": {"summary": "Headlights on while the engine is off and every door is closed"},
    "starts_at": 1718000300000,
    "ends_at": None,
    "generated_at": 1718000360120,
    "snapshot": {"car": CAR, "reservation": None, "signals": {"Vehicle.Body.Lights.Beam.Low.IsOn": True}},
    "tags": {"environment": "beta", "stage": "pilot", "fleet": "seoul-gangnam"},
}

Scalar = float | int | bool | str | None


class SignalValue(BaseModel):
    value: Scalar
    ts: int = Field(description="Event time of the reading, epoch ms")
    seq: int
    device_id: str


class Location(BaseModel):
    lat: float
    lon: float


class VehicleState(BaseModel):
    """The latest state of a vehicle; beside ``car``, one field per child role of the join model (the
    default model's: ``reservation``) holding the car's chosen row or null."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"example": STATE})
    car_id: int
    last_seen: int
    location: Location | None
    signals: dict[str, SignalValue]
    car: dict[str, Any] | None
    devices: list[str]
    updated_at: int
    version: int


class Incident(BaseModel):
    """The newest outlier event of an incident (``schemas/outlier.v1``) plus the tags of its vehicle."""

    model_config = ConfigDict(json_schema_extra={"example": INCIDENT})
    incident_id: str
    fingerprint: str
    rule_id: str
    status: Literal["firing", "resolved"]
    severity: str
    car_id: int
    device_id: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: int
    ends_at: int | None
    generated_at: int
    snapshot: dict[str, Any]
    tags: dict[str, str] = Field(description="Resource tags of the vehicle (what access policies read)")


class VehicleDetail(VehicleState):
    model_config = ConfigDict(
        json_schema_extra={"example": {**STATE, "tags": INCIDENT["tags"], "active_incidents": [INCIDENT]}}
    )
    tags: dict[str, str] = Field(description="Resource tags of the vehicle (from its carinfo row)")
    active_incidents: list[Incident] = Field(description="Firing incidents of the vehicle")


class VehiclePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"items": [STATE], "next_cursor": "dmVoaWNsZXN8MTA0Mn…"}}
    )
    items: list[VehicleState]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= (with the same filters) for the next page; null when this is the last. "
        "A page may hold fewer than `limit` items (even none) and still have a next cursor: each request "
        "looks at a bounded number of index entries."
    )


SUMMARY: Any = {
    "car_id": 1042,
    "last_seen": 1718000060000,
    "location": {"lat": 37.5, "lon": 127.03},
    "version": 57,
    "plate": "12가3456",
    "model": "Kia Niro EV",
    "fleet": "seoul-gangnam",
    "status": "ACTIVE",
    "environment": "beta",
    "stage": "pilot",
    "zone": "Z07",
    "speed": 42.0,
    "engine": True,
}


class VehicleSummary(BaseModel):
    """What a fleet overview needs of a vehicle (``view=summary``): about a tenth of the state document."""

    model_config = ConfigDict(json_schema_extra={"example": SUMMARY})
    car_id: int
    last_seen: int
    location: Location | None
    version: int
    plate: str | None
    model: str | None
    fleet: str | None
    status: str | None
    environment: str | None
    stage: str | None
    zone: str | None
    speed: float | None = Field(description="Vehicle.Speed (km/h), when known")
    engine: bool | None = Field(description="Vehicle.Powertrain.CombustionEngine.IsRunning, when known")


class VehicleSummaryPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"items": [SUMMARY], "next_cursor": None}})
    items: list[VehicleSummary]
    next_cursor: str | None


class VehicleHistory(BaseModel):
    """A vehicle's recent samples as columns: ``ts[i]`` is the event time of ``signals[name][i]``."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "car_id": 1042,
                "step_ms": 30000,
                "ts": [1718000000000, 1718000030000],
                "signals": {
                    "Vehicle.Speed": [38.5, 41.0],
                    "Vehicle.LowVoltageBattery.CurrentVoltage": [14.1, None],
                },
            }
        }
    )
    car_id: int
    step_ms: int = Field(description="At most one sample per this much of the vehicle's event time")
    ts: list[int] = Field(description="Event time of each sample (epoch ms), ascending")
    signals: dict[str, list[float | None]] = Field(description="Per signal, its value at each sample")


class IncidentPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"items": [INCIDENT], "next_cursor": None}})
    items: list[Incident]
    next_cursor: str | None


class Delivery(BaseModel):
    status: str = Field(description="queued | retrying | delivered | dead-lettered")
    attempts: int
    last_error: str | None
    http_status: int | None
    at: int = Field(description="When this status was recorded, epoch ms")
    job: str = Field(description="Delivery id (the webhook-id of webhook deliveries)")


class IncidentDetail(Incident):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                **INCIDENT,
                "deliveries": {
                    "ops": {
                        "status": "delivered",
                        "attempts": 1,
                        "last_error": None,
                        "http_status": 200,
                        "at": 1718000361000,
                        "job": "msg_2b7c",
                    }
                },
            }
        }
    )
    deliveries: dict[str, Delivery] = Field(description="Delivery log per receiver (from the alerts outbox)")


class Device(BaseModel):
    """A device's join: its row, its car's, and one field per child role of the join model (the default
    model's: ``reservation``), as of ``at``."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "device_id": "dev-000042",
                "at": 1718000060000,
                "device": {"device_id": "dev-000042", "car_id": 1042, "kind": "telematics"},
                "car": CAR,
                "reservation": None,
                "devices": 1,
                "positions": {
                    "device": "L00000000000024023128",
                    "car": "L00000000000024023000",
                    "reservation": None,
                },
            }
        },
    )
    device_id: str
    at: int | None = Field(description="The event time the join is as of (null: the newest rows)")
    device: dict[str, Any]
    car: dict[str, Any] | None
    devices: int = Field(description="How many devices the car had then")
    positions: dict[str, str | None] = Field(description="Source position of each role's row (CDC order)")


MATCHER = r'^\s*[A-Za-z_][A-Za-z0-9_]*\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\S*)\s*$'


class SilenceIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "matchers": ['environment="beta"', 'alertname="headlights-left-on"'],
                "duration": "2h",
                "comment": "bulb replacement in the beta fleet",
            }
        },
    )
    matchers: list[Annotated[str, Field(max_length=200)]] = Field(
        min_length=1,
        max_length=20,
        description=(
            'Alertmanager label matchers (name="v", !=, =~, !~). The equality matchers on tag labels '
            "(environment, stage, fleet) are the tags the silence requests; policies decide on them."
        ),
    )
    duration: str = Field(
        pattern=r"^[0-9]{1,7}(ms|s|m|h)$", description="How long, e.g. 30m, 2h, 48h (at most 90 days)"
    )
    comment: str = Field("", max_length=500)


class Silence(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "3f9a1c2b7d4e",
                "matchers": ['environment="beta"'],
                "starts_at": 1718000000000,
                "ends_at": 1718007200000,
                "created_by": "partner-beta",
                "comment": "",
                "tags": {"environment": "beta"},
                "active": True,
            }
        }
    )
    id: str
    matchers: list[str]
    starts_at: int
    ends_at: int
    created_by: str
    comment: str
    tags: dict[str, str]
    active: bool


class Rule(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "headlights-left-on",
                "summary": "Headlights on while the engine is off",
                "description": "",
                "when": "Vehicle.Body.Lights.Beam.Low.IsOn and not "
                "Vehicle.Powertrain.CombustionEngine.IsRunning",
                "for_ms": 60000,
                "keep_firing_for_ms": 0,
                "severity": "warning",
                "labels": {"audience": "customer"},
            }
        }
    )
    id: str
    summary: str
    description: str
    when: str
    for_ms: int
    keep_firing_for_ms: int
    severity: str
    labels: dict[str, str]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"ready": True, "redis": True, "kafka": True, "down": []}}
    )
    ready: bool
    redis: bool
    kafka: bool
    down: list[str] = Field(description="The dependencies that do not answer (redis, kafka)")
