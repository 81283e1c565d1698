"""Telemetry enrichment flow: decode → join with the snapshot → enriched topic, latest state, Parquet.

Wiring (all logic lives in enrich/, I/O in stores/ and flows/kafka_io):

1. ``KafkaBatchSource`` emits one item per poll: a batch of records of one telemetry partition.
2. ``join`` — keyed by partition, stateful: decodes, looks the devices up (per-process cache + one Lua call
   for the misses), buffers events whose device or car is not in the snapshot yet (bounded by time and
   count, retried on a timer), and folds events into one update per car. Its state (the pending misses)
   are in bytewax recovery snapshots, so nothing buffered is lost on a crash.
3. ``latest`` (flows/vehicle_state.py) — keyed by car bucket: merges each car's update into its vehicle
   state (per signal, the newer event wins), evaluates the outlier rules on every change and on timers, and
   emits the state (one Redis MSET per batch) and outlier events (outliers topic). Rules run in this pass:
   no extra Kafka hop.
4. Sinks: enriched events (key = car id) and dead letters to Kafka, flushed per batch; Parquet files of the
   raw and enriched events (stores/parquet_history: replays never duplicate rows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import bytewax.operators as op
import orjson
import redis
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from enrich.deadletter import dead_letter
from enrich.errors import DecodeError
from enrich.join import CarUpdate, enriched_event, join_status
from enrich.records import Record
from enrich.rules.model import load_rules
from enrich.settings import Settings
from enrich.tables import load_tables
from enrich.telemetry import Telemetry, decode_telemetry
from flows import metrics
from flows.kafka_io import DeadLetterProducer, KafkaBatchSource, KafkaWriter
from flows.vehicle_state import BucketLogic, StateSink, by_bucket
from stores.parquet_history import EnrichedRow, HistoryWriter, RawRow
from stores.redis_snapshot import RedisSnapshotStore
from stores.snapshot_cache import CachedSnapshot


@dataclass(slots=True)
class Pending:
    record: Record
    tel: Telemetry
    first_seen_ms: int
    attempts: int = 0


@dataclass(slots=True)
class PartitionState:
    pending: list[Pending] = field(default_factory=list)


@dataclass(slots=True)
class JoinOut:
    topic: str = ""
    partition: int = -1
    enriched: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dead: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    cars: dict[int, CarUpdate] = field(default_factory=dict)
    raw_rows: list[RawRow] = field(default_factory=list)
    enriched_rows: list[EnrichedRow] = field(default_factory=list)


class _Context:
    """Per-process resources of the join step (created lazily, never pickled into state)."""

    _instances: ClassVar[dict[int, _Context]] = {}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        client = redis.Redis.from_url(settings.redis_url)
        store = RedisSnapshotStore(client, load_tables(settings.tables_file), prefix=settings.snapshot_prefix)
        self.snapshot = CachedSnapshot(store)

    @classmethod
    def get(cls, settings: Settings) -> _Context:
        ctx = cls._instances.get(id(settings))
        if ctx is None:
            ctx = cls._instances[id(settings)] = _Context(settings)
        return ctx


def _now_ms() -> int:
    return int(time.time() * 1000)


class JoinLogic(StatefulLogic[list[Record], JoinOut, PartitionState]):
    def __init__(self, settings: Settings, resume: PartitionState | None) -> None:
        self.settings = settings
        self.ctx = _Context.get(settings)
        self.state = resume or PartitionState()

    # -- bytewax hooks ---------------------------------------------------------------------------------
    def on_item(self, value: list[Record]) -> tuple[list[JoinOut], bool]:
        return [self._process(value, _now_ms())], StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[JoinOut], bool]:
        return [self._process([], _now_ms())], StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[JoinOut], bool]:
        return [self._process([], _now_ms(), final=True)], StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.state.pending:
            return None
        return datetime.now(UTC) + timedelta(milliseconds=self.settings.join_retry_ms)

    def snapshot(self) -> PartitionState:
        return self.state

    # -- the work --------------------------------------------------------------------------------------
    def _process(self, records: list[Record], now: int, *, final: bool = False) -> JoinOut:
        out = JoinOut()
        s = self.settings
        decoded: list[Pending] = []
        raw_rows = out.raw_rows
        for rec in records:
            try:
                decoded.append(Pending(rec, decode_telemetry(rec.value), now))
            except DecodeError as exc:
                out.dead.append(
                    dead_letter(exc, stage="telemetry.decode", source=rec.ref(), value=rec.value, now_ms=now)
                )
            raw_rows.append((rec.offset, rec.timestamp or 0, rec.key, rec.value))
        metrics.RECORDS_IN.labels("enrich").inc(len(records))
        candidates = self.state.pending + decoded
        if candidates:
            out.topic, out.partition = candidates[0].record.topic, candidates[0].record.partition
        elif records:
            out.topic, out.partition = records[0].topic, records[0].partition
        if not candidates:
            return out
        merged = self.ctx.snapshot.lookup({p.tel.device_id for p in candidates})
        still: list[Pending] = []
        waiting_devices: set[str] = set()
        for p in candidates:
            m = merged.get(p.tel.device_id)
            rows = m.rows if m is not None else None
            complete = (
                rows is not None and rows.get("deviceinfo") is not None and rows.get("carinfo") is not None
            )
            if not complete or (waiting_devices and p.tel.device_id in waiting_devices):
                status = join_status(m)
                expired = now - p.first_seen_ms >= s.join_max_wait_ms or final
                if not expired and len(still) < s.join_max_pending:
                    p.attempts += 1
                    still.append(p)
                    waiting_devices.add(p.tel.device_id)  # keep the device's later events behind it
                    continue
                metrics.JOIN_MISSES.labels(status).inc()
            self._emit(p, m, now, out)
        if len(still) < len(self.state.pending):
            metrics.JOIN_RETRIED.inc(len(self.state.pending) - len(still))
        self.state.pending = still
        metrics.PENDING.set(len(still))
        return out

    def _emit(self, p: Pending, m: Any, now: int, out: JoinOut) -> None:
        event = enriched_event(p.tel, m, attempts=p.attempts, now_ms=now)
        body = orjson.dumps(event)
        car: int | None = event["car_id"]
        key = str(car).encode() if car is not None else p.tel.device_id.encode()
        out.enriched.append((key, body))
        if car is not None:
            upd = out.cars.get(car)
            if upd is None:
                upd = out.cars[car] = CarUpdate(car)
            upd.add(p.tel, m)
        out.enriched_rows.append(
            (p.record.offset, event["event_id"], car, p.tel.ts, event["enrichment"]["status"], body.decode())
        )


OUT_PARTITIONS = 16


class _OutPartition(StatefulSinkPartition[JoinOut, None]):
    """Enriched events and dead letters go to Kafka as they come (no waiting per batch); Parquet rows are
    buffered. Both are made durable in ``snapshot()``, which bytewax calls at the end of every epoch before
    it commits the input offsets — so nothing acknowledged can be lost — and, without recovery, at least
    every ``history_flush_s``."""

    def __init__(self, settings: Settings) -> None:
        self.enriched = KafkaWriter(settings.kafka_bootstrap, settings.topic_enriched)
        self.dlq = DeadLetterProducer(settings.kafka_bootstrap, settings.topic_dlq)
        self.history = HistoryWriter(settings.history_dir or settings.state_dir / "history")
        self.flush_s = settings.history_flush_s
        self.max_rows = 100_000
        self._raw: dict[tuple[str, int], list[RawRow]] = {}
        self._rows: dict[tuple[str, int], list[EnrichedRow]] = {}
        self._buffered = 0
        self._last_flush = time.monotonic()

    def write_batch(self, values: list[JoinOut]) -> None:
        n = 0
        for out in values:
            self.enriched.send(out.enriched)
            self.dlq.send_letters(out.dead, "telemetry.decode")
            n += len(out.enriched)
            if out.partition >= 0:
                key = (out.topic, out.partition)
                self._raw.setdefault(key, []).extend(out.raw_rows)
                self._rows.setdefault(key, []).extend(out.enriched_rows)
                self._buffered += len(out.raw_rows) + len(out.enriched_rows)
        self.enriched.poll()
        metrics.EVENTS_OUT.inc(n)
        if self._buffered >= self.max_rows or time.monotonic() - self._last_flush >= self.flush_s:
            self._flush()

    def _flush(self) -> None:
        start = time.perf_counter()
        self.enriched.flush()
        self.dlq.flush()
        for key in set(self._raw) | set(self._rows):
            self.history.write(key[0], key[1], self._raw.get(key, []), self._rows.get(key, []))
        self._raw.clear()
        self._rows.clear()
        self._buffered = 0
        self._last_flush = time.monotonic()
        metrics.BATCH_SECONDS.labels("enrich_flush").observe(time.perf_counter() - start)

    def snapshot(self) -> None:
        self._flush()

    def close(self) -> None:
        self._flush()


class OutSink(FixedPartitionedSink[JoinOut, None]):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def list_parts(self) -> list[str]:
        return [f"out-{i}" for i in range(OUT_PARTITIONS)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _OutPartition:
        return _OutPartition(self.settings)


def build_flow(settings: Settings, *, tail: bool = True, batch_size: int = 5000) -> Dataflow:
    flow = Dataflow("telemetry_enrichment")
    src = KafkaBatchSource(
        settings.kafka_bootstrap, [settings.topic_telemetry], batch_size=batch_size, tail=tail
    )
    batches = op.input("telemetry_in", flow, src)
    keyed = op.key_on("by_partition", batches, lambda b: f"{b[0].topic}-{b[0].partition}")
    joined = op.stateful("join", keyed, lambda resume: JoinLogic(settings, resume))
    op.output("enriched_out", joined, OutSink(settings))
    outs = op.map("drop_key", joined, lambda kv: kv[1])
    updates = op.flat_map("car_updates", outs, by_bucket)
    rules = load_rules(settings.rules_file) if settings.rules_enabled else []
    states = op.stateful("latest", updates, lambda resume: BucketLogic(rules, resume))
    op.output("state_out", states, StateSink(settings))
    return flow
