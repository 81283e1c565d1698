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
