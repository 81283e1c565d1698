"""Latest vehicle state and outlier rules, keyed by car bucket (part of the enrichment flow).

Cars are spread over ``STATE_BUCKETS`` keys, so bytewax routes one item per bucket and batch instead of one
per car. Each bucket merges its cars' updates into their vehicle state (per signal, the newer event wins),
evaluates the rules on every state change and on timers, and emits the state JSON (for Redis) and outlier
events (for the outliers topic). Event time for timers is a watermark: the minimum over the telemetry
partitions of their newest event time (partitions quiet for ``IDLE_PARTITION_S`` are left out), advanced
by the wall clock while the whole input is idle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from enrich.join import CarUpdate, VehicleState
from enrich.rules.engine import AlertState, RuleEngine, VehicleFacts
from enrich.rules.model import Rule
from enrich.rules.names import ATTR, Extras
from enrich.settings import Settings
from flows import metrics
from flows.kafka_io import KafkaWriter

STATE_BUCKETS = 16
_UNSET = object()
IDLE_PARTITION_S = 10.0
SWEEP_EVERY_S = 0.25
GAP_CHECK_MS = 60_000


@dataclass(slots=True)
class BucketInput:
    cars: dict[int, CarUpdate]
    partition: str
    partition_max_ts: int


@dataclass(slots=True)
class BucketSnapshot:
    encoded: dict[int, bytes]
    extras: dict[int, Extras]
    alerts: dict[int, dict[str, AlertState]]
    partitions: dict[str, int]


Out = tuple[str, int, bytes]  # ("state" | "outlier", car id, JSON)


class BucketLogic(StatefulLogic[BucketInput, Out, BucketSnapshot]):
    def __init__(self, rules: list[Rule], resume: BucketSnapshot | None) -> None:
        snap = resume or BucketSnapshot({}, {}, {}, {})
        self.states: dict[int, VehicleState] = {}
        self.encoded = dict(snap.encoded)
        self.extras = dict(snap.extras)
        self.engine = RuleEngine(rules, dict(snap.alerts))
        self.timed = [r for r in rules if r.uses_time]
        self.inputs = sorted({name for r in rules for name in r.inputs if name != ATTR})
        self.partitions = dict(snap.partitions)  # partition -> newest event time
        self._heard: dict[str, float] = {}  # partition -> wall time last heard
        self._idle_since = time.monotonic()
        self._idle_base: int | None = None
        self._last_sweep = 0.0

    # -- event time ------------------------------------------------------------------------------------
    def watermark(self) -> int | None:
        now = time.monotonic()
        live = [ts for p, ts in self.partitions.items() if now - self._heard.get(p, now) < IDLE_PARTITION_S]
        if not live:
            live = list(self.partitions.values())
        if not live:
            return None
        wm = min(live)
        if self._idle_base is not None:  # nothing arrives at all: let event time follow the wall clock
            wm = max(wm, self._idle_base + int((now - self._idle_since) * 1000))
        return wm

    def _state(self, car: int) -> VehicleState:
        state = self.states.get(car)
        if state is None:
            known = self.encoded.get(car)
            state = VehicleState.from_document(orjson.loads(known)) if known else VehicleState(car)
            self.states[car] = state
        return state

    def _facts(self, car: int, values: dict[str, Any] | None = None) -> VehicleFacts:
        st, ex = self._state(car), self.extras.get(car) or Extras()
        return VehicleFacts(
            car_id=car,
            values=st.values if values is None else values,
            last_seen=st.last_seen,
            device_seen=ex.device_seen,
            car=st.car,
            reservation=st.reservation,
            speed_prev=ex.speed_prev,
            speed_last=ex.speed_last,
            engine_on_at=ex.engine_on_at,
            device_id=ex.last_device,
        )

    # -- bytewax hooks ---------------------------------------------------------------------------------
    def on_item(self, value: BucketInput) -> tuple[list[Out], bool]:
        now_wall = int(time.time() * 1000)
        if value.partition:
            self.partitions[value.partition] = max(
                self.partitions.get(value.partition, 0), value.partition_max_ts
            )
            self._heard[value.partition] = time.monotonic()
        self._idle_base = None
        out: list[Out] = []
        for car, upd in value.cars.items():
            state = self._state(car)
            if self.engine.rules:
                out.extend(self._evaluate_events(car, upd, now_wall))
            if state.merge(upd, now_wall) or car not in self.encoded:
                body = orjson.dumps(state.document())
                self.encoded[car] = body
                out.append(("state", car, body))
        out.extend(self._sweep(now_wall))
        return out, StatefulLogic.RETAIN

    def _evaluate_events(self, car: int, upd: CarUpdate, now_wall: int) -> list[Out]:
        """Rules see every event, in order, as the state looked right after it (a batch is not coalesced
        for rules: a condition that starts and ends inside one batch is still seen)."""
        ex = self.extras.get(car)
        if ex is None:
            ex = self.extras[car] = Extras()
        state = self._state(car)
        facts = self._facts(car, dict(state.values))
        view = facts.values
        out: list[Out] = []
        for tel in sorted(upd.events, key=lambda t: (t.ts, t.seq)):
            seen = ex.device_seen.get(tel.device_id)
            if self.timed and seen is not None and tel.ts - seen > GAP_CHECK_MS:
                # A device back after a long gap: let time-based rules see the gap before the event
                # closes it (timers may not have run inside it when catching up on a backlog).
                for event in self.engine.evaluate(facts, tel.ts, self.timed, wall_ms=now_wall):
                    out.append(("outlier", car, orjson.dumps(event)))
            if not ex.see(tel):
                continue  # older than what the car already showed: it changes no current value
            signals = tel.signals
            changed = {k for k in self.inputs if k in signals and view.get(k, _UNSET) != signals[k]}
            view.update(signals)
            facts.last_seen = max(facts.last_seen, tel.ts)
            facts.speed_prev, facts.speed_last = ex.speed_prev, ex.speed_last
            facts.engine_on_at, facts.device_id = ex.engine_on_at, tel.device_id
            if upd.car is not None and (upd.car != facts.car or upd.reservation != facts.reservation):
                facts.car, facts.reservation = upd.car, upd.reservation
                changed.add(ATTR)
            if not changed and car not in self.engine.states:
                continue  # nothing a rule reads changed and no alert is pending or firing
            for event in self.engine.evaluate(facts, tel.ts, wall_ms=now_wall, changed=changed):
                out.append(("outlier", car, orjson.dumps(event)))
        return out

    def on_notify(self) -> tuple[list[Out], bool]:
        if self._idle_base is None:
            self._idle_base = self.watermark()
            self._idle_since = time.monotonic()
        return self._sweep(int(time.time() * 1000)), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(seconds=1)

    def _sweep(self, now_wall: int) -> list[Out]:
        """Timers: re-evaluate time-dependent rules for every car, and every rule for cars with a pending
        or firing alert, at the watermark."""
        mono = time.monotonic()
        if mono - self._last_sweep < SWEEP_EVERY_S:
            return []
        self._last_sweep = mono
        wm = self.watermark()
        if wm is None:
            return []
        out: list[Out] = []
        active = set(self.engine.states)
        cars = set(self.encoded) if self.timed else active
        for car in cars:
            facts = self._facts(car)
            now = max(wm, facts.last_seen)
            rules = None if car in active else self.timed
            for event in self.engine.evaluate(facts, now, rules, wall_ms=now_wall):
                out.append(("outlier", car, orjson.dumps(event)))
        return out

    def snapshot(self) -> BucketSnapshot:
        return BucketSnapshot(dict(self.encoded), self.extras, self.engine.states, self.partitions)


def by_bucket(out: Any) -> list[tuple[str, BucketInput]]:
    """Split a join output into one input per bucket; every bucket hears the partition's event time."""
    buckets: dict[int, dict[int, CarUpdate]] = {b: {} for b in range(STATE_BUCKETS)}
    newest = 0
    for car, upd in out.cars.items():
        buckets[car % STATE_BUCKETS][car] = upd
        newest = max(newest, upd.last_seen)
    part = f"{out.topic}-{out.partition}" if out.partition >= 0 else ""
    if not newest:
        part = ""  # no event time learnt from this batch
    return [(str(b), BucketInput(cars, part, newest)) for b, cars in buckets.items() if cars or part]


class _StatePartition(StatelessSinkPartition[tuple[str, Out]]):
    def __init__(self, settings: Settings) -> None:
        self.client = redis.Redis.from_url(settings.redis_url)
        self.prefix = settings.state_prefix
        self.outliers = KafkaWriter(settings.kafka_bootstrap, settings.topic_outliers)

    def write_batch(self, items: list[tuple[str, Out]]) -> None:
        latest: dict[str, bytes] = {}
        alerts: list[tuple[bytes | None, bytes]] = []
        for _bucket, (kind, car, body) in items:
            if kind == "state":
                latest[f"{self.prefix}car:{car}"] = body  # coalesce: one write per vehicle per batch
            else:
                alerts.append((str(car).encode(), body))
        if latest:
            self.client.mset(latest)
            metrics.STATE_WRITES.inc(len(latest))
        if alerts:
            self.outliers.send(alerts)
            self.outliers.flush()
            metrics.OUTLIERS.inc(len(alerts))


class StateSink(DynamicSink[tuple[str, Out]]):
    """Vehicle states to Redis (one MSET per batch) and outlier events to the outliers topic (key = car)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StatePartition:
        return _StatePartition(self.settings)
