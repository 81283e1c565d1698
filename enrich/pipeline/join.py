"""The join step of the enrichment flow, one micro-batch of one telemetry partition at a time (pure).

``JoinCore.process(records, now_ms)`` decodes every record, checks its event time, looks the devices up in
the snapshot (one call of the ``Lookup`` port per batch: a cache hit, or one round trip for the misses),
joins each event with the rows **as of its own time** (``enrich.asof``: a bisection of the device's
timeline, no I/O), and returns a ``JoinBatch``: the enriched messages to produce (key = car id, with the
source offset of each for dead-letter evidence), the dead letters, the events grouped per car for the state
step (each with its car's rows as of its time, and whether the car had several devices then), and the rows
of the Parquet history.

Invariants:

* every record ends up exactly once as an enriched message, a dead letter, or pending (buffered, see
  below) — nothing is dropped silently;
* a record whose device or car is not in the snapshot yet waits (``pending``, part of the recovery state)
  and is retried on every later batch and timer, for at most ``max_wait_ms`` of processing time and at
  most ``max_pending`` records (time a lookup spent blocked on an unreachable store does not count:
  after a Redis outage the snapshot flow gets the whole ``max_wait_ms`` to catch up); then it is emitted
  with ``enrichment.status`` = ``missing``/``partial``. Later events of a waiting device wait behind it,
  so a device's events leave in order. How often an event was retried travels beside it (``attempts``, a
  Kafka header), not in its bytes;
* an event stamped more than ``max_future_skew_ms`` ahead of the wall clock (a device with a wrong clock),
  or older than ``max_age_ms`` (when set), is dead-lettered with reason ``future_timestamp`` / ``too_old``:
  it never reaches the state, the watermark or a timer;
* ``progress`` is the newest event time of the batch's accepted events: the partition's contribution to
  the watermark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from enrich.asof import Timeline
from enrich.deadletter import dead_letter
from enrich.errors import DecodeError
from enrich.pipeline.encode import Attrs, Fragment, encode, fragment
from enrich.records import EnrichedColumns, Record
from enrich.tables import DEFAULT_MODEL, JoinModel
from enrich.telemetry import DEFAULT_MAX_BYTES, Telemetry, decode_telemetry

STALL_MS = 250  # a lookup this slow was waiting for an unreachable store, not doing a round trip


class Lookup(Protocol):
    """The snapshot, as the join sees it: device timelines by device id (misses left out or None)."""

    def __call__(self, device_ids: Collection[str], /) -> Mapping[str, Timeline | None]: ...


@dataclass(frozen=True, slots=True)
class JoinConfig:
    max_wait_ms: int = 2000
    max_pending: int = 20_000
    max_future_skew_ms: int = 300_000
    max_age_ms: int = 0  # 0: no horizon
    max_event_bytes: int = DEFAULT_MAX_BYTES
    model: JoinModel = DEFAULT_MODEL


@dataclass(slots=True)
class Pending:
    record: Record
    tel: Telemetry
    first_seen_ms: int
    attempts: int = 0


@dataclass(slots=True)
class JoinState:
    """The recovery state of one partition's join: the records waiting for their snapshot rows."""

    pending: list[Pending] = field(default_factory=list)


NO_ROWS: Attrs = (None, {})


@dataclass(slots=True)
class CarEvents:
    """What one batch says about one car: its events in arrival order with the car's snapshot rows as of
    each event's time — ``attrs`` for all of them, or ``each[i]`` for ``events[i]`` once they differ —, how
    many devices the car had (the most at the time of one of them; ``multi``: several, so its events must
    be merged in event-time order from the first), and the newest event time."""

    events: list[Telemetry]
    attrs: Attrs = NO_ROWS  # the rows of every event (while ``each`` is None)
    each: list[Attrs] | None = None  # the rows of each event, once they differ between events
    devices: int = 0  # the most devices the car had at the time of one of the events (0: unknown)
    newest: int = -1

    @property
    def multi(self) -> bool:
        return self.devices > 1

    def add(self, tel: Telemetry, attrs: Attrs) -> None:
        """One more event, with the car's rows as of its time."""
        if not self.events:
            self.attrs = attrs
        elif self.each is not None:
            self.each.append(attrs)
        elif attrs is not self.attrs:
            self.each = [self.attrs] * len(self.events) + [attrs]
        self.events.append(tel)
        if tel.ts > self.newest:
            self.newest = tel.ts

    def rows(self) -> list[Attrs]:
        """The rows of each event."""
        return self.each if self.each is not None else [self.attrs] * len(self.events)


@dataclass(slots=True)
class JoinBatch:
    topic: str = ""
    partition: int = -1
    keys: list[bytes] = field(default_factory=list)  # enriched messages: key, value, the record it came from
    bodies: list[bytes] = field(default_factory=list)
    sources: list[Record] = field(default_factory=list)
    dead: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dead_reasons: dict[str, int] = field(default_factory=dict)
    cars: dict[int, CarEvents] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)  # the raw history: every record read
    history: EnrichedColumns = field(default_factory=EnrichedColumns.empty)  # bodies: the ``bodies`` list
    attempts: dict[int, int] = field(default_factory=dict)  # message index -> retries (events that waited)
    progress: int = 0
    idle: bool = False  # the partition reported it is idle (no records; see enrich.pipeline.watermark)
    misses: dict[str, int] = field(default_factory=dict)  # emitted without a full record, by status
    retried: int = 0  # buffered records joined on a retry
    pending: int = 0

    @property
    def part_key(self) -> str:
        return f"{self.topic}-{self.partition}"


@dataclass(slots=True)
class JoinTimes:
    """CPU seconds of this thread per phase since the core was built (one clock read per phase per batch)."""

    decode: float = 0.0  # parsing, validation, event-time checks, dead letters
    lookup: float = 0.0  # the snapshot (cache hits, one round trip for misses)
    emit: float = 0.0  # the enriched JSON, grouping per car, history rows
    events: int = 0


class JoinCore:
    def __init__(
        self,
        lookup: Lookup,
        config: JoinConfig | None = None,
        state: JoinState | None = None,
        *,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        """``wall``: seconds of a monotonic clock, to measure how long a lookup was blocked."""
        self.lookup = lookup
        self.wall = wall
        self.config = config or JoinConfig()
        self.state = state or JoinState()
        self.times = JoinTimes()

    @property
    def has_pending(self) -> bool:
        return bool(self.state.pending)

    def process(self, records: list[Record], now_ms: int, *, final: bool = False) -> JoinBatch:
        """Join one batch of records of one partition (and retry what is pending)."""
        cfg = self.config
        clock = time.thread_time  # CPU time of this thread: robust on a shared machine
        t0 = clock()
        out = JoinBatch(records=records)
        out.history = EnrichedColumns([], [], [], [], [], out.bodies)
        if records:
            out.topic, out.partition = records[0].topic, records[0].partition
        elif self.state.pending:
            first = self.state.pending[0].record
            out.topic, out.partition = first.topic, first.partition
        newest_ok = now_ms + cfg.max_future_skew_ms
        oldest_ok = now_ms - cfg.max_age_ms if cfg.max_age_ms > 0 else 0
        decoded: list[tuple[Record, Telemetry]] = []
        for rec in records:
            try:
                tel = decode_telemetry(rec.value, cfg.max_event_bytes)
                if tel.ts > newest_ok:
                    raise DecodeError(
                        f"event time {tel.ts} is {tel.ts - now_ms} ms ahead of the wall clock "
                        f"(limit {cfg.max_future_skew_ms} ms)",
                        reason="future_timestamp",
                        field_path="ts",
                    )
                if tel.ts < oldest_ok:
                    raise DecodeError(
                        f"event time {tel.ts} is older than the horizon of {cfg.max_age_ms} ms",
                        reason="too_old",
                        field_path="ts",
                    )
            except DecodeError as exc:
                out.dead.append(
                    dead_letter(
                        exc, stage="telemetry.decode", source=rec.ref(), value=rec.value, now_ms=now_ms
                    )
                )
                out.dead_reasons[exc.reason] = out.dead_reasons.get(exc.reason, 0) + 1
                continue
            decoded.append((rec, tel))
        pending = self.state.pending
        times = self.times
        t1 = clock()
        times.decode += t1 - t0
        times.events += len(records)
        if not decoded and not pending:
            return out
        wanted = {tel.device_id for _, tel in decoded}
        wanted.update(p.tel.device_id for p in pending)
        waited = self.wall()
        merged = self.lookup(wanted)
        # wall time the lookup was blocked (a store outage) does not count against an event's wait; an
        # ordinary round trip does (else back-to-back lookups would keep a miss waiting for ever)
        stalled = int((self.wall() - waited) * 1000)
        if stalled >= STALL_MS:
            now_ms += stalled
            for p in pending:
                p.first_seen_ms += stalled
        t2 = clock()
        times.lookup += t2 - t1
        model = cfg.model
        still: list[Pending] = []
        waiting: set[str] = set()
        if pending:
            for p in pending:
                tl = merged.get(p.tel.device_id)
                frag = fragment(tl.single or tl.at(p.tel.ts) if tl is not None else None, model)
                if frag.status != "ok" or p.tel.device_id in waiting:
                    if not final and now_ms - p.first_seen_ms < cfg.max_wait_ms:
                        p.attempts += 1
                        still.append(p)
                        waiting.add(p.tel.device_id)
                        continue
                    if frag.status != "ok":
                        out.misses[frag.status] = out.misses.get(frag.status, 0) + 1
                else:
                    out.retried += 1
                self._emit(out, p.record, p.tel, frag, p.attempts)
        for rec, tel in decoded:
            tl = merged.get(tel.device_id)
            frag = fragment(tl.single or tl.at(tel.ts) if tl is not None else None, model)
            if frag.status != "ok" or (waiting and tel.device_id in waiting):
                if not final and len(still) < cfg.max_pending:
                    still.append(Pending(rec, tel, now_ms, 1))
                    waiting.add(tel.device_id)
                    continue
                if frag.status != "ok":
                    out.misses[frag.status] = out.misses.get(frag.status, 0) + 1
            self._emit(out, rec, tel, frag, 0)
        self.state.pending = still
        out.pending = len(still)
        times.emit += clock() - t2
        return out

    @staticmethod
    def _emit(out: JoinBatch, rec: Record, tel: Telemetry, frag: Fragment, attempts: int) -> None:
        event_id = f"{tel.device_id}:{tel.seq}"
        body = encode(tel, None, frag, rec.timestamp)  # None: the standard id, spliced
        car = frag.car_id
        if attempts:
            out.attempts[len(out.bodies)] = attempts
        out.keys.append(frag.key if frag.key is not None else tel.device_id.encode())
        out.bodies.append(body)
        out.sources.append(rec)
        history = out.history
        history.offsets.append(rec.offset)
        history.event_ids.append(event_id)
        history.car_ids.append(car)
        history.ts.append(tel.ts)
        history.statuses.append(frag.status)
        out.progress = max(out.progress, tel.ts)
        if car is not None:
            ce = out.cars.get(car)
            if ce is None:  # (CarEvents.add, inlined: this runs once per event)
                out.cars[car] = CarEvents([tel], frag.attrs, None, frag.devices, tel.ts)
                return
            ce.events.append(tel)
            attrs = frag.attrs
            if ce.each is not None:
                ce.each.append(attrs)
            elif attrs is not ce.attrs:
                ce.each = [ce.attrs] * (len(ce.events) - 1) + [attrs]
            if frag.devices > ce.devices:
                ce.devices = frag.devices
            if tel.ts > ce.newest:
                ce.newest = tel.ts
