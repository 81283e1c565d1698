"""Telemetry enrichment flow: wiring only (the work is ``enrich.pipeline``; I/O is ``stores/`` and
``flows/kafka_io``).

1. ``KafkaBatchSource`` emits one ``PartitionBatch`` per poll (records of one telemetry partition, or a
   marker that the partition went idle).
2. ``join`` — keyed by partition: ``enrich.pipeline.join.JoinCore`` (decode, event-time checks, snapshot
   lookup, buffered misses). Its pending misses are bytewax state, so nothing buffered is lost on a crash.
3. ``enriched_out`` — enriched events and dead letters to Kafka as they come; Parquet history buffered and
   made durable at every epoch end, before bytewax commits the input offsets.
4. ``latest`` — keyed by car bucket: ``enrich.pipeline.state.StateCore`` (fold into vehicle state, rules,
   timers in event time); ``state_out`` writes the states to Redis (one write per batch) and the outliers.

``build_flow`` is the composition root: it builds the per-process resources (the snapshot cache shared by
the join and state steps, the compiled rule pack) and passes them in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.kafka_writer import KafkaWriter
from enrich import telemetry
from enrich.asof import Timeline
from enrich.pipeline.join import CarEvents, JoinBatch, JoinConfig, JoinCore, JoinState, Lookup
from enrich.pipeline.state import BucketInput, StateCore, StateOut, StateSnapshot
from enrich.records import EnrichedColumns, PartitionBatch
from enrich.rules.engine import RuleEngine
from enrich.rules.model import load_rules
from enrich.settings import Settings
from enrich.tables import JoinModel, load_model
from flows import metrics
from flows.kafka_io import KafkaBatchSource
from flows.vehicle_state import STATE_BUCKETS, StateSink
from stores.parquet_history import HistoryWriter
from stores.snapshot_cache import CachedSnapshot

OUT_PARTITIONS = 16
ATTEMPTS_HEADER = "enrich-attempts"  # on enriched events that waited for their snapshot rows: retries made


@dataclass(slots=True)
class Resources:
    """What the steps of one worker process share (built once per process by ``resources``)."""

    settings: Settings
    lookup: Lookup
    engine: RuleEngine
    join_config: JoinConfig
    model: JoinModel


def resources(settings: Settings) -> Resources:
    from stores.redis_client import redis_client
    from stores.redis_snapshot import RedisSnapshotStore

    model = load_model(settings.tables_file)
    store = RedisSnapshotStore.from_settings(settings, redis_client(settings), model)
    cache = CachedSnapshot(store, feed_interval_s=0.02)

    def lookup(device_ids: Collection[str]) -> Mapping[str, Timeline | None]:
        return cache.lookup(device_ids)

    rules = load_rules(settings.rules_file, model.attribute_roles) if settings.rules_enabled else []
    config = JoinConfig(
        max_wait_ms=settings.join_max_wait_ms,
        max_pending=settings.join_max_pending,
        max_future_skew_ms=int(settings.max_future_skew_s * 1000),
        max_age_ms=int(settings.max_event_age_s * 1000),
        max_event_bytes=settings.max_event_bytes,
        model=model,
    )
    return Resources(settings, lookup, RuleEngine(rules), config, model)


def _now_ms() -> int:
    return int(time.time() * 1000)


class JoinLogic(StatefulLogic[PartitionBatch, JoinBatch, JoinState]):
    def __init__(self, res: Resources, resume: JoinState | None) -> None:
        self.core = JoinCore(res.lookup, res.join_config, resume)
        self.retry_ms = res.settings.join_retry_ms

    def _run(self, batch: PartitionBatch | None, *, final: bool = False) -> tuple[list[JoinBatch], bool]:
        start = time.perf_counter()
        out = self.core.process(batch.records if batch is not None else [], _now_ms(), final=final)
        if batch is not None:
            out.topic, out.partition = batch.topic, batch.partition
            out.idle = batch.idle and not out.bodies
        metrics.RECORDS_IN.labels("enrich").inc(len(out.records))
        for status, n in out.misses.items():
            metrics.JOIN_MISSES.labels(status).inc(n)
        if out.retried:
            metrics.JOIN_RETRIED.inc(out.retried)
        metrics.PENDING.set(out.pending)
        metrics.BATCH_SECONDS.labels("enrich_join").observe(time.perf_counter() - start)
        return [out], StatefulLogic.RETAIN

    def on_item(self, value: PartitionBatch) -> tuple[list[JoinBatch], bool]:
        return self._run(value)

    def on_notify(self) -> tuple[list[JoinBatch], bool]:
        return self._run(None)

    def on_eof(self) -> tuple[list[JoinBatch], bool]:
        return self._run(None, final=True)

    def notify_at(self) -> datetime | None:
        if not self.core.has_pending:
            return None
        return datetime.now(UTC) + timedelta(milliseconds=self.retry_ms)

    def snapshot(self) -> JoinState:
        return self.core.state


class ToBuckets:
    """Split a join batch into one input per car bucket. Every bucket must hear each partition's progress
    (its watermark depends on it), but a bucket with no car in the batch hears it at most every
    ``quiet_ms`` of processing time (and always when the partition goes idle): at small, frequent batches
    the progress-only items would otherwise dominate the cost. The progress values themselves are data,
    so this changes only when a deadline is evaluated, never what it says."""

    def __init__(self, buckets: int = STATE_BUCKETS, quiet_ms: float = 20.0) -> None:
        self.buckets = buckets
        self.quiet_s = quiet_ms / 1000
        self._told: dict[str, float] = {}  # partition -> when every bucket last heard its progress

    def __call__(self, out: JoinBatch) -> list[tuple[str, BucketInput]]:
        if out.partition < 0:
            return []
        idle, progress = out.idle, out.progress
        n = self.buckets
        buckets: dict[int, dict[int, CarEvents]] = {}
        for car, ce in out.cars.items():
            b = car % n
            d = buckets.get(b)
            if d is None:
                d = buckets[b] = {}
            d[car] = ce
        part = out.part_key
        if progress or idle:
            now = time.monotonic()
            if idle or now - self._told.get(part, 0.0) >= self.quiet_s:
                self._told[part] = now
                return [(str(b), BucketInput(buckets.get(b, {}), part, progress, idle)) for b in range(n)]
        return [(str(b), BucketInput(cars, part, progress)) for b, cars in buckets.items()]


class BucketLogic(StatefulLogic[BucketInput, StateOut, StateSnapshot]):
    def __init__(self, res: Resources, resume: StateSnapshot | None, partitions: list[str]) -> None:
        self.core = StateCore(res.engine, res.lookup, resume, model=res.model, partitions=partitions)

    def on_item(self, value: BucketInput) -> tuple[list[StateOut], bool]:
        start = time.perf_counter()
        out = self.core.process(value, _now_ms())
        metrics.BATCH_SECONDS.labels("enrich_state").observe(time.perf_counter() - start)
        return ([out] if out else []), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[StateOut], bool]:
        out = self.core.drain(_now_ms())
        return ([out] if out else []), StatefulLogic.RETAIN

    def snapshot(self) -> StateSnapshot:
        return self.core.snapshot()


class _OutPartition(StatefulSinkPartition[JoinBatch, None]):
    """Enriched events and dead letters go to Kafka as they come. Parquet rows are buffered briefly and
    appended to the history's open segments (compressed and written by its background thread) every
    ``APPEND_ROWS`` rows or ``APPEND_S`` seconds. Both are made durable in ``snapshot()``, which bytewax
    calls at the end of every epoch before it commits the input offsets — so nothing acknowledged can be
    lost — and, without recovery, at least every ``history_flush_s``. The end of an epoch waits for the last
    appended rows and the segments' footers only: no epoch-long stall on the output path."""

    APPEND_ROWS = 4096
    APPEND_S = 0.5

    def __init__(self, settings: Settings) -> None:
        # one writer: enriched events, and dead letters (bad input, and records the broker refuses)
        self.enriched = KafkaWriter.from_settings(settings, settings.topic_enriched, stage="enrich.produce")
        self.history = HistoryWriter(settings.history_dir or settings.state_dir / "history", background=True)
        self.flush_s = settings.history_flush_s
        self._raw: dict[tuple[str, int], list[object]] = {}
        self._rows: dict[tuple[str, int], EnrichedColumns] = {}
        self._buffered = 0
        self._last_append = self._last_commit = time.monotonic()

    def write_batch(self, values: list[JoinBatch]) -> None:
        n = 0
        for out in values:
            if out.attempts:  # events that waited for their rows carry how often in a header
                for i, (k, body, src) in enumerate(zip(out.keys, out.bodies, out.sources, strict=True)):
                    tries = out.attempts.get(i)
                    headers = [(ATTEMPTS_HEADER, b"%d" % tries)] if tries else None
                    self.enriched.send_to(self.enriched.topic, k, body, src, headers=headers)
                n += len(out.bodies)
            elif out.bodies:
                self.enriched.send(zip(out.keys, out.bodies, out.sources, strict=True))
                n += len(out.bodies)
            if out.dead:
                self.enriched.send_letters(out.dead, "telemetry.decode")
            if out.records or out.history.rows:
                key = (out.topic, out.partition)
                self._raw.setdefault(key, []).extend(out.records)
                rows = self._rows.get(key)
                if rows is None:
                    rows = self._rows[key] = EnrichedColumns.empty()
                rows.extend(out.history)
                self._buffered += len(out.records) + out.history.rows
        self.enriched.poll()
        metrics.EVENTS_OUT.inc(n)
        now = time.monotonic()
        if now - self._last_commit >= self.flush_s:
            self._flush(durable=False)
        elif self._buffered >= self.APPEND_ROWS or (
            self._buffered and now - self._last_append >= self.APPEND_S
        ):
            self._append()

    def _append(self) -> None:
        """Hand the buffered rows to the history's open segments (written in the background)."""
        for key in set(self._raw) | set(self._rows):
            self.history.append(key[0], key[1], self._raw.get(key, []), self._rows.get(key))  # type: ignore[arg-type]
        self._raw.clear()
        self._rows.clear()
        self._buffered = 0
        self._last_append = time.monotonic()

    def _flush(self, *, durable: bool) -> None:
        """Commit the history's segments (every row so far on disk, in its final file); with ``durable``,
        also wait until every message is delivered (the end of an epoch)."""
        start = time.perf_counter()
        self._append()
        if durable:
            self.enriched.flush()
        self.history.commit()
        self._last_commit = time.monotonic()
        metrics.BATCH_SECONDS.labels("enrich_flush").observe(time.perf_counter() - start)

    def snapshot(self) -> None:
        self._flush(durable=True)

    def close(self) -> None:
        self._flush(durable=True)
        self.history.close()


class OutSink(FixedPartitionedSink[JoinBatch, None]):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def list_parts(self) -> list[str]:
        return [f"out-{i}" for i in range(OUT_PARTITIONS)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _OutPartition:
        return _OutPartition(self.settings)


def build_flow(settings: Settings, *, tail: bool = True, res: Resources | None = None) -> Dataflow:
    res = res or resources(settings)
    logging.getLogger(__name__).info("telemetry decoder: %s", telemetry.IMPLEMENTATION)
    flow = Dataflow("telemetry_enrichment")
    src = KafkaBatchSource(
        settings.kafka_bootstrap,
        [settings.topic_telemetry],
        batch_size=settings.batch_max,
        tail=tail,
        idle_after_s=settings.watermark_idle_s,
        max_message_bytes=settings.kafka_max_message_bytes,
    )
    batches = op.input("telemetry_in", flow, src)
    # every telemetry partition ("topic-partition"): event time waits until each has reported
    partitions = [f"{topic}-{p}" for p, topic in (part.split("-", 1) for part in src.list_parts())]
    keyed = op.key_on("by_partition", batches, lambda b: f"{b.topic}-{b.partition}")
    joined = op.stateful("join", keyed, lambda resume: JoinLogic(res, resume))
    op.output("enriched_out", joined, OutSink(settings))
    outs = op.map("drop_key", joined, lambda kv: kv[1])
    updates = op.flat_map("to_buckets", outs, ToBuckets())
    states = op.stateful("latest", updates, lambda resume: BucketLogic(res, resume, partitions))
    op.output("state_out", states, StateSink(settings))
    return flow


__all__ = ["BucketLogic", "JoinLogic", "Resources", "ToBuckets", "build_flow", "resources"]
