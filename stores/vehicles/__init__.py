"""The vehicle store: latest vehicle state, the secondary indexes the API filters on, incident records and
the change stream behind server-sent events — all Redis layout knowledge of them lives in this package.

* ``VehicleWriter`` — the flow's side: ONE ``write_batch`` call per micro-batch (state documents and
  outlier events), one pipelined round trip (``redis_writer`` documents the cost per car).
* ``VehicleReader`` — the API's side (async): a vehicle with its active incidents, filtered pages served
  from the indexes, incidents, the change stream.

Implementations: ``RedisVehicleWriter`` / ``RedisVehicleReader`` (layout in ``layout``) and the in-memory
twin ``MemoryVehicleStore`` (both sides), which the same tests run against.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from stores.vehicles.model import (
    TAG_COLUMNS,
    BBox,
    Change,
    IncidentQuery,
    Page,
    SeriesConfig,
    Tags,
    VehicleQuery,
    VehicleStateWrite,
    class_id,
    tags_of,
)


class VehicleWriter(Protocol):
    def write_batch(
        self, states: Mapping[int, VehicleStateWrite], outliers: Sequence[bytes | Mapping[str, Any]] = ()
    ) -> None: ...


class VehicleReader(Protocol):
    tag_columns: tuple[str, ...]

    async def vehicle(self, car_id: int) -> tuple[bytes, list[bytes]] | None: ...

    async def docs(self, car_ids: list[int]) -> dict[int, bytes]: ...

    async def classes(self) -> dict[str, Tags]: ...

    async def list_vehicles(
        self,
        q: VehicleQuery,
        allowed: Collection[str] | None,
        after: str | None,
        limit: int,
        max_scan: int = 5000,
        summary: bool = False,
    ) -> Page: ...

    async def series(self, car_id: int) -> list[bytes]: ...

    async def incident(self, incident_id: str) -> bytes | None: ...

    async def list_incidents(
        self,
        q: IncidentQuery,
        allowed: Collection[str] | None,
        after: str | None,
        limit: int,
        max_scan: int = 5000,
    ) -> Page: ...

    async def changes(
        self, after: str | None, count: int = 100, block_ms: int | None = None
    ) -> list[Change]: ...

    async def change_bounds(self) -> tuple[str | None, str | None]: ...

    async def ping(self) -> bool: ...


__all__ = [
    "TAG_COLUMNS",
    "BBox",
    "Change",
    "IncidentQuery",
    "Page",
    "SeriesConfig",
    "Tags",
    "VehicleQuery",
    "VehicleReader",
    "VehicleStateWrite",
    "VehicleWriter",
    "class_id",
    "tags_of",
]
