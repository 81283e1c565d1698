"""CDC snapshot flow: CDC topics → normalise (enrich.cdc) → position-checked writes to the snapshot store.

Bad messages go to the dead-letter topic; control (DDL) records and tombstones are counted. Each micro-batch
is one Lua call to Redis (chunked), made by a writer thread of the sink partition while the worker reads
and normalises the next batch (at most one batch in flight per partition, applied in order). At the end of
every epoch ``snapshot()`` waits until every batch handed over is applied and every dead letter delivered,
before bytewax commits the input offsets: with recovery the flow is at-least-once, and the store's position
check makes replays harmless.

Outages: while Redis is away the writer blocks in the store's retrying client, and the sink waits for it at
the next batch; while Kafka is away the dead-letter flush waits; either way the worker's input pauses and
resumes where it stopped, nothing is skipped, and a restart from recovery replays only what was not
acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.kafka_writer import KafkaWriter
from enrich.cdc import CdcBatch, Change, normalise_batch
from enrich.records import Record
from enrich.settings import Settings
from enrich.snapshot import SnapshotStore
from enrich.tables import TableSpec
from flows import metrics
from flows.kafka_io import KafkaBatchSource

log = logging.getLogger(__name__)
SINK_PARTITIONS = 4
IN_FLIGHT = 1  # batches a partition's writer may still be applying while the next is handed over


class _SnapshotPartition(StatefulSinkPartition[CdcBatch, None]):
    def __init__(self, store: SnapshotStore, dlq: KafkaWriter) -> None:
        self.store = store
        self.dlq = dlq
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="snapshot-apply")
        self._pending: deque[Future[None]] = deque()

    def _apply(self, changes: list[Change], started: float) -> None:
        result = self.store.apply(changes)
        metrics.CDC_CHANGES.labels("applied").inc(result.applied)
        metrics.CDC_CHANGES.labels("stale").inc(result.stale)
        metrics.BATCH_SECONDS.labels("snapshot").observe(time.perf_counter() - started)

    def _wait(self, keep: int) -> None:
        while len(self._pending) > keep:
            self._pending.popleft().result()  # a failed apply fails the worker here

    def write_batch(self, items: list[CdcBatch]) -> None:
        started = time.perf_counter()
        changes = [ch for batch in items for ch in batch.changes]
        for batch in items:
            self.dlq.send_letters(batch.dead, "cdc.normalise")
            for kind, n in batch.skipped.items():
                if n:
                    metrics.CDC_SKIPPED.labels(kind).inc(n)
        self.dlq.poll()
        self._wait(IN_FLIGHT - 1)
        if changes:
            self._pending.append(self._pool.submit(self._apply, changes, started))

    def snapshot(self) -> None:
        self._wait(0)
        self.dlq.flush()

    def close(self) -> None:
        self._wait(0)
        self._pool.shutdown()
        self.dlq.flush()


class SnapshotSink(FixedPartitionedSink[CdcBatch, None]):
    def __init__(self, store_factory: Callable[[], SnapshotStore], dlq_factory: Callable[[], KafkaWriter]):
        self.store_factory = store_factory
        self.dlq_factory = dlq_factory

    def list_parts(self) -> list[str]:
        return [f"snapshot-{i}" for i in range(SINK_PARTITIONS)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SnapshotPartition:
        return _SnapshotPartition(self.store_factory(), self.dlq_factory())


def _normalise(records: list[Record], tables: dict[str, TableSpec]) -> tuple[str, CdcBatch]:
    metrics.RECORDS_IN.labels("snapshot").inc(len(records))
    first = records[0]
    return f"{first.topic}-{first.partition}", normalise_batch(records, tables, int(time.time() * 1000))


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
    normalised = op.map("normalise", batches, lambda records: _normalise(records, tables))
    op.output(
        "snapshot_out",
        normalised,
        SnapshotSink(
            store_factory, lambda: KafkaWriter.from_settings(settings, settings.topic_dlq, stage="cdc.dlq")
        ),
    )
    return flow
