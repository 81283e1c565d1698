"""CDC snapshot flow: CDC topics → normalise (enrich.cdc) → position-checked writes to the snapshot store.

Bad messages go to the dead-letter topic; control (DDL) records and tombstones are counted. Each micro-batch
is one Lua call to Redis (chunked), and its dead letters are flushed before the batch is acknowledged, so
with bytewax recovery the flow is at-least-once and the store's position check makes replays harmless.

Outages: while Redis is away the sink blocks in the store's retrying client, while Kafka is away the
dead-letter flush waits; either way the worker's input pauses and resumes where it stopped, nothing is
skipped, and a restart from recovery replays only what was not acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.kafka_writer import KafkaWriter
from enrich.cdc import CdcBatch, normalise_batch
from enrich.settings import Settings
from enrich.snapshot import SnapshotStore
from enrich.tables import TableSpec
from flows import metrics
from flows.kafka_io import KafkaBatchSource

log = logging.getLogger(__name__)


class _SnapshotPartition(StatelessSinkPartition[CdcBatch]):
    def __init__(self, store: SnapshotStore, dlq: KafkaWriter) -> None:
        self.store = store
        self.dlq = dlq

    def write_batch(self, items: list[CdcBatch]) -> None:
        start = time.perf_counter()
        changes = [ch for batch in items for ch in batch.changes]
        for batch in items:
            self.dlq.send_letters(batch.dead, "cdc.normalise")
            for kind, n in batch.skipped.items():
                if n:
                    metrics.CDC_SKIPPED.labels(kind).inc(n)
        result = self.store.apply(changes)
        self.dlq.flush()
        metrics.CDC_CHANGES.labels("applied").inc(result.applied)
        metrics.CDC_CHANGES.labels("stale").inc(result.stale)
        metrics.BATCH_SECONDS.labels("snapshot").observe(time.perf_counter() - start)


class SnapshotSink(DynamicSink[CdcBatch]):
    def __init__(self, store_factory: Callable[[], SnapshotStore], dlq_factory: Callable[[], KafkaWriter]):
        self.store_factory = store_factory
        self.dlq_factory = dlq_factory

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SnapshotPartition:
        return _SnapshotPartition(self.store_factory(), self.dlq_factory())


def _count(batch: list[object]) -> list[object]:
    metrics.RECORDS_IN.labels("snapshot").inc(len(batch))
    return batch


def build_flow(
    settings: Settings,
    tables: dict[str, TableSpec],
    store_factory: Callable[[], SnapshotStore],
    *,
    tail: bool = True,
    batch_size: int = 5000,
) -> Dataflow:
    topics = [settings.cdc_topic(t) for t in tables]
    flow = Dataflow("cdc_snapshot")
    source = KafkaBatchSource(settings.kafka_bootstrap, topics, batch_size=batch_size, tail=tail,
                              max_message_bytes=settings.kafka_max_message_bytes)  # fmt: skip
    batches = op.input("cdc_in", flow, source)
    normalised = op.map(
        "normalise",
        batches,
        lambda records: normalise_batch(_count(records), tables, int(time.time() * 1000)),  # type: ignore[arg-type]
    )
    op.output(
        "snapshot_out",
        normalised,
        SnapshotSink(
            store_factory, lambda: KafkaWriter.from_settings(settings, settings.topic_dlq, stage="cdc.dlq")
        ),
    )
    return flow
