"""A message as read from Kafka, engine-agnostic (flows convert their connector's type into this)."""

from __future__ import annotations

from typing import NamedTuple

from enrich.deadletter import SourceRef


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None

    def ref(self) -> SourceRef:
        return SourceRef(self.topic, self.partition, self.offset, self.timestamp, self.key)


class EnrichedColumns(NamedTuple):
    """Rows of the Parquet history of enriched events, as columns (one list per field, row ``i`` across
    them): built by appending, handed to Arrow without a tuple per row."""

    offsets: list[int]  # of the telemetry records
    event_ids: list[str]
    car_ids: list[int | None]
    ts: list[int]  # event times
    statuses: list[str]  # the join's outcome (enrich.pipeline.encode.JoinStatus)
    bodies: list[bytes]  # the enriched events' JSON

    @classmethod
    def empty(cls) -> EnrichedColumns:
        return cls([], [], [], [], [], [])

    @property
    def rows(self) -> int:
        return len(self.offsets)

    def extend(self, other: EnrichedColumns) -> None:
        self.offsets.extend(other.offsets)
        self.event_ids.extend(other.event_ids)
        self.car_ids.extend(other.car_ids)
        self.ts.extend(other.ts)
        self.statuses.extend(other.statuses)
        self.bodies.extend(other.bodies)


class PartitionBatch(NamedTuple):
    """Records read from one partition in one go. ``idle``: the partition was read to its end and nothing
    new arrived for a while (``records`` is then empty); a watermark may stop waiting for it."""

    topic: str
    partition: int
    records: list[Record]
    idle: bool = False
