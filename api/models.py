"""Response models of the HTTP API (schemas/vehicle-state.v1 for the state document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class SignalValue(BaseModel):
    value: float | int | bool | str | None
    ts: int = Field(description="Event time of the reading, epoch ms")
    seq: int
    device_id: str


class Location(BaseModel):
    lat: float
    lon: float


class VehicleState(BaseModel):
    car_id: int
    last_seen: int
    location: Location | None
    signals: dict[str, SignalValue]
    car: dict[str, Any] | None
    reservation: dict[str, Any] | None
    devices: list[str]
    updated_at: int
    version: int


class VehiclePage(BaseModel):
    items: list[VehicleState]
    next_cursor: int = Field(description="Pass as ?cursor= for the next page; 0 when there is none")


class SnapshotRecord(BaseModel):
    rows: dict[str, dict[str, Any] | None]
    positions: dict[str, str | None]


class Delivery(BaseModel):
    status: str = Field(description="queued | retrying | delivered | dead-lettered")
    attempts: int
    last_error: str | None
    http_status: int | None
    at: int = Field(description="When this status was recorded, epoch ms")
    job: str = Field(description="Delivery id (the webhook-id of webhook deliveries)")


class Health(BaseModel):
    redis: bool


class Readiness(BaseModel):
    ready: bool
    redis: bool = Field(description="Redis answered PING")
    kafka: bool = Field(description="Kafka answered a metadata request")
    down: list[str] = Field(description="Dependencies that did not answer")
