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


class EnrichedRow(NamedTuple):
    """One row of the Parquet history of enriched events."""

    offset: int  # of the telemetry record
    event_id: str
    car_id: int | None
    ts: int  # event time
    status: str  # the join's outcome (enrich.pipeline.encode.JoinStatus)
    body: bytes  # the enriched event's JSON


class PartitionBatch(NamedTuple):
    """Records read from one partition in one go. ``idle``: the partition was read to its end and nothing
    new arrived for a while (``records`` is then empty); a watermark may stop waiting for it."""

    topic: str
    partition: int
    records: list[Record]
    idle: bool = False
