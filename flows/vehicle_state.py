"""The state sink of the enrichment flow: vehicle states to Redis, outlier events to the outliers topic.

Vehicle states, their indexes, incident records and the change stream go to Redis in one round trip per
batch (``stores.vehicles``), from a writer thread, in batch order; a later batch's state of a car simply
replaces an earlier one, so a replay after a crash is harmless. Outlier events are produced as they come
(the producer batches them for a few ms) and made durable at the end of every epoch, before bytewax
commits the input offsets: an outlier is never lost, and a replayed one carries the same incident id,
which the alerts worker deduplicates.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.kafka_writer import KafkaWriter
from enrich.pipeline.state import StateOut
from enrich.settings import Settings
from flows import metrics
from stores.redis_client import redis_client
from stores.vehicles import VehicleStateWrite
from stores.vehicles.redis_writer import RedisVehicleWriter

STATE_BUCKETS = 16
SINK_PARTITIONS = 16


class _StatePartition(StatefulSinkPartition[StateOut, None]):
    """States go to Redis from a writer thread of their own (one write per batch, in order), so the worker
    computes the next batch while Redis applies this one; ``snapshot`` waits for both outputs."""

    def __init__(self, settings: Settings) -> None:
        self.store = RedisVehicleWriter(redis_client(settings), settings.state_prefix)
        self.outliers = KafkaWriter.from_settings(settings, settings.topic_outliers, stage="enrich.outliers")
        self._unflushed = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="state-writer")
        self._pending: list[Future[None]] = []

    def _write_states(self, latest: dict[int, VehicleStateWrite], outliers: list[bytes]) -> None:
        # states, their indexes, incidents and the change stream: one round trip (stores/vehicles)
        self.store.write_batch(latest, outliers)
        metrics.STATE_WRITES.inc(len(latest))

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def write_batch(self, items: list[StateOut]) -> None:
        start = time.perf_counter()
        latest: dict[int, VehicleStateWrite] = {}
        alerts: list[tuple[bytes | None, bytes]] = []
        for out in items:
            docs = out.docs
            for car, body in out.states.items():
                latest[car] = VehicleStateWrite(body, docs.get(car))  # one write per vehicle per batch
            for car, body in out.outliers:
                alerts.append((str(car).encode(), body))
        if alerts:
            self.outliers.send(alerts)
            self.outliers.poll()
            self._unflushed += len(alerts)
            metrics.OUTLIERS.inc(len(alerts))
        if latest or alerts:
            still = []
            for f in self._pending:
                if f.done():
                    f.result()  # a failed write fails the batch here
                else:
                    still.append(f)
            self._pending = still
            events = [body for _key, body in alerts]
            self._pending.append(self._pool.submit(self._write_states, latest, events))
        metrics.BATCH_SECONDS.labels("enrich_state_out").observe(time.perf_counter() - start)

    def snapshot(self) -> None:
        self._wait()
        if self._unflushed:
            self.outliers.flush()
            self._unflushed = 0

    def close(self) -> None:
        self._wait()
        self._pool.shutdown()
        self.outliers.flush()


class StateSink(FixedPartitionedSink[StateOut, None]):
    """Vehicle states to Redis (one MSET per batch) and outlier events to the outliers topic (key = car)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def list_parts(self) -> list[str]:
        return [f"state-{i}" for i in range(SINK_PARTITIONS)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _StatePartition:
        return _StatePartition(self.settings)
