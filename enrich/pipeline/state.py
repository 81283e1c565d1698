"""The state step of the enrichment flow: latest vehicle state, outlier rules and their timers (pure).

A ``StateCore`` owns the vehicles of one key range (a bucket of car ids). ``process(BucketInput)`` takes
one join batch's events of its cars plus the batch's partition report, and returns a ``StateOut``: the
state documents to write (schemas/vehicle-state.v1, one per changed car) and the outlier events.

Invariants:

* **Latest state.** Per signal the value of the newest event (event time, then sequence) wins; an older
  event never overwrites a newer value, so folding is idempotent and order-free (replays are harmless).
* **Rules see every event in order** as the car looked right after it (events of a car are sorted by
  (event time, sequence) within a batch; an event older than what the car already showed changes no value
  a rule reads). A car is evaluated at an event only when an input of the pack changed, a snapshot
  attribute changed, or an alert is pending or firing.
* **Timers in event time.** After each evaluation the car files its next deadline (``RuleEngine.
  next_deadline``) in a timing wheel. Deadlines are evaluated *at the deadline's own time* once the
  watermark passes it, or before an event of the car that is later than the deadline when every partition
  the car's devices report on has passed it too — so incident start and end times come from the data,
  never from when a batch happened to arrive. The cost of time passing is the number of due deadlines.
* **Current devices only.** The car's devices are checked against the snapshot (``Lookup``, as of the
  time evaluated) before any deadline is evaluated and whenever a new device reports for the car; a device
  that no longer belongs to it then stops counting (its silence is not the car's).
* **Cars with several devices** see their events in event-time order from their first event: the join
  says how many devices the car has (``CarEvents.devices``/``multi``); until every one of them has
  reported, the car's events wait for the watermark of all partitions, then for the watermark of the
  partitions its devices report on when those are several (one partition delivers in its own order).
* **Snapshot rows as of each event.** Rules see the car's rows (``car``, the child roles) as they were at
  each event's time: a batch's events are folded in runs of equal rows.
* Evaluation time never goes backwards for a car (an event later than a fired deadline but older than it
  in event time is evaluated at the deadline's time), so an incident never ends before it starts.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from enrich.pipeline.encode import Attrs, car_at
from enrich.pipeline.join import CarEvents, Lookup
from enrich.pipeline.timers import Timers
from enrich.pipeline.watermark import Watermark
from enrich.rules.engine import Alerts, AlertState, RuleEngine
from enrich.rules.names import ATTR, ENGINE, SPEED, VehicleFacts
from enrich.tables import DEFAULT_MODEL, JoinModel
from enrich.telemetry import Scalar, Telemetry

LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
Stamp = tuple[int, int, str]  # event time, sequence, device: a total order of a car's events
Held = tuple[Telemetry, Attrs]  # an event and the car's rows as of its time
#: The fields of a state record / vehicle-state document besides the child rows (which sit beside ``car``
#: by role).
DOC_FIELDS = frozenset(
    {
        "car_id",
        "last_seen",
        "location",
        "signals",
        "values",
        "stamps",
        "car",
        "devices",
        "updated_at",
        "version",
    }
)


@dataclass(slots=True)
class CarState(VehicleFacts):
    """The facts rules read, plus what the state document and the timers need."""

    stamps: dict[str, Stamp] = field(default_factory=dict)
    partitions: dict[str, str] = field(default_factory=dict)  # device -> partition it reports on
    alerts: Alerts = field(default_factory=dict)
    evaluated_at: int = 0  # event time of the last rule evaluation
    deadline: int | None = None  # filed in the timers (kept here for the recovery snapshot)
    held: list[Held] = field(default_factory=list)  # events waiting for the car's other partitions
    multi: bool = False  # not all its devices have reported yet, or they report on several partitions
    expected: int = 0  # how many devices the car has (the snapshot, as of its newest batch)
    updated_at: int = 0
    version: int = 0
    dirty: bool = False  # the document changed since it was last written

    def record(self) -> dict[str, Any]:
        """The stored state record: ``schemas/vehicle-state.v1`` with the signals kept as two flat maps —
        ``values`` (path → value) and ``stamps`` (path → [event time, sequence, device]) — because it is
        written once per changed car per batch: encoding the car's own dicts costs a third of building the
        per-signal objects. Readers turn it into the document with ``public_document``."""
        lat, lon = self.values.get(LAT), self.values.get(LON)
        return {
            "car_id": self.car_id,
            "last_seen": self.last_seen,
            "location": {"lat": lat, "lon": lon} if lat is not None and lon is not None else None,
            "values": self.values,
            "stamps": self.stamps,
            "car": self.car,
            **self.children,
            "devices": sorted(self.device_seen),
            "updated_at": self.updated_at,
            "version": self.version,
        }

    def document(self) -> dict[str, Any]:
        """``schemas/vehicle-state.v1``."""
        return public_document(self.record())

    def freeze(self) -> tuple[Any, ...]:
        """Everything but the document, as plain values (the recovery snapshot)."""
        alerts = {k: (a.active_since, a.last_true, a.firing, a.incident_id) for k, a in self.alerts.items()}
        return (self.speed_prev, self.speed_last, self.engine_on_at, self.device_id, self.newest,
                dict(self.device_seen), dict(self.partitions), alerts, self.evaluated_at,
                self.deadline, list(self.held), self.multi, self.expected)  # fmt: skip

    @classmethod
    def thaw(cls, doc: dict[str, Any], frozen: tuple[Any, ...]) -> CarState:
        """From a stored record (or a vehicle-state.v1 document) and the frozen facts."""
        if "values" in doc:
            values, stamps = doc["values"], {p: tuple(st) for p, st in doc["stamps"].items()}
        else:
            signals = doc["signals"]
            values = {p: s["value"] for p, s in signals.items()}
            stamps = {p: (s["ts"], s["seq"], s["device_id"]) for p, s in signals.items()}
        sp, sl, eng, dev, newest, seen, parts, alerts, evaluated, deadline, held, multi, expected = frozen
        return cls(
            car_id=doc["car_id"],
            values=values,
            last_seen=doc["last_seen"],
            device_seen=dict(seen),
            car=doc["car"],
            children={k: v for k, v in doc.items() if k not in DOC_FIELDS},
            speed_prev=sp,
            speed_last=sl,
            engine_on_at=eng,
            device_id=dev,
            newest=newest,
            stamps=stamps,
            partitions=dict(parts),
            alerts={k: AlertState(*a) for k, a in alerts.items()},
            evaluated_at=evaluated,
            deadline=deadline,
            held=list(held),
            multi=multi,
            expected=expected,
            updated_at=doc["updated_at"],
            version=doc["version"],
        )


def public_document(record: dict[str, Any]) -> dict[str, Any]:
    """A stored state record (``CarState.record``) as ``schemas/vehicle-state.v1``: each signal with the
    event time, sequence and device of the event it came from. A document already in that form is
    returned as it is."""
    if "values" not in record:
        return record
    stamps = record["stamps"]
    signals = {}
    for path, value in record["values"].items():
        st = stamps[path]
        signals[path] = {"value": value, "ts": st[0], "seq": st[1], "device_id": st[2]}
    return {
        "car_id": record["car_id"],
        "last_seen": record["last_seen"],
        "location": record["location"],
        "signals": signals,
        "car": record["car"],
        **{k: v for k, v in record.items() if k not in DOC_FIELDS},  # the child rows, by role
        "devices": record["devices"],
        "updated_at": record["updated_at"],
        "version": record["version"],
    }


def public_bytes(raw: bytes) -> bytes:
    """``public_document`` on JSON bytes (returned unchanged when already public)."""
    if b'"values":' not in raw:
        return raw
    return orjson.dumps(public_document(orjson.loads(raw)))


@dataclass(slots=True)
class BucketInput:
    """One join batch, as one bucket sees it: the events of its cars and the partition's report."""

    cars: dict[int, CarEvents]
    partition: str
    progress: int  # newest event time of the batch (0 when none)
    idle: bool = False  # the partition is idle (see enrich.pipeline.watermark)


@dataclass(slots=True)
class StateOut:
    states: dict[int, bytes] = field(default_factory=dict)  # car -> stored state record JSON
    docs: dict[int, dict[str, Any]] = field(
        default_factory=dict
    )  # car -> car row, last_seen, location, version
    outliers: list[tuple[int, bytes]] = field(default_factory=list)  # (car, outlier JSON)

    def __bool__(self) -> bool:
        return bool(self.states or self.outliers)


@dataclass(slots=True)
class StateSnapshot:
    """The recovery state of one bucket: per car its document and frozen facts; the watermark."""

    cars: dict[int, tuple[bytes, tuple[Any, ...]]]
    progress: dict[str, int]
    idle: set[str]
    watermark: int | None


class StateCore:
    def __init__(
        self,
        engine: RuleEngine,
        lookup: Lookup | None = None,
        resume: StateSnapshot | None = None,
        *,
        model: JoinModel = DEFAULT_MODEL,
        partitions: Collection[str] = (),
    ) -> None:
        """``partitions``: every input partition (``topic-partition``); the watermark waits for all."""
        self.engine = engine
        self.lookup = lookup
        self.model = model
        self.rules_on = bool(engine.rules)
        self.inputs = engine.inputs
        self.watched = sorted(k for k in engine.inputs if k != ATTR)  # signals whose change is evaluated
        self.time_inputs = engine.pack.time_inputs
        self.cars: dict[int, CarState] = {}
        self.timers = Timers()
        snap = resume or StateSnapshot({}, {}, set(), None)
        self.frozen = dict(snap.cars)  # the recovery snapshot: per car (document, frozen facts)
        self._docs: dict[int, bytes] = {}  # the last state record written per car
        self._unsnapped: set[int] = set()  # cars touched since the last snapshot
        self.encode_s = 0.0  # CPU seconds spent encoding state documents (for the stage budget)
        self.watermark = Watermark(dict(snap.progress), set(snap.idle), snap.watermark, frozenset(partitions))
        self._holding: list[tuple[int, int]] = []  # (oldest held event time, car): cars with held events
        for car, (_doc, frozen) in self.frozen.items():
            if frozen[9] is not None:
                self.timers.file(car, frozen[9])
            if frozen[10]:
                heapq.heappush(self._holding, (min(h[0].ts for h in frozen[10]), car))

    # -- state -----------------------------------------------------------------------------------------
    def car(self, car_id: int) -> CarState:
        cs = self.cars.get(car_id)
        if cs is None:
            known = self.frozen.get(car_id)
            if known is not None:
                cs = CarState.thaw(orjson.loads(known[0]), known[1])
            else:
                cs = CarState(car_id, {}, 0, {}, None, {})
            self.cars[car_id] = cs
        return cs

    def snapshot(self) -> StateSnapshot:
        """The recovery state; cars touched since the last snapshot are frozen now (once per epoch, not
        once per batch)."""
        frozen, docs, cars = self.frozen, self._docs, self.cars
        for car_id in self._unsnapped:
            cs = cars[car_id]
            body = docs.get(car_id)
            if body is None:
                known = frozen.get(car_id)
                body = known[0] if known is not None else orjson.dumps(cs.record())
            frozen[car_id] = (body, cs.freeze())
        self._unsnapped.clear()
        return StateSnapshot(
            dict(frozen), dict(self.watermark.progress), set(self.watermark.idle), self.watermark.value
        )

    # -- the work --------------------------------------------------------------------------------------
    def process(self, inp: BucketInput, wall_ms: int) -> StateOut:
        out = StateOut()
        touched: set[int] = set()
        wm = self.watermark.value
        if inp.partition:
            wm = self.watermark.observe(inp.partition, inp.progress, inp.idle)
        part = inp.partition
        for car_id, ce in inp.cars.items():
            cs = self.car(car_id)
            parts = cs.partitions
            changed = ce.devices != cs.expected
            for tel in ce.events:  # where each device reports (it may move when partitions change)
                if parts.get(tel.device_id) != part:
                    parts[tel.device_id] = part
                    changed = True
            if changed:  # hold while a device of the car is not known yet, or they span partitions
                cs.expected = ce.devices
                cs.multi = len(parts) < ce.devices or len(set(parts.values())) > 1
            if cs.multi or cs.held:
                self._hold(cs, ce, wall_ms, out)
            elif ce.each is None:  # one set of rows for every event
                events = ce.events if len(ce.events) < 2 else _in_order(ce.events)
                self._car_events(cs, events, ce.attrs[0], ce.attrs[1], ce.newest, wall_ms, out)
            else:
                self._fold_runs(cs, *_in_order_with(ce.events, ce.each), wall_ms, out)
            touched.add(car_id)
        if wm is not None and self._holding and self._holding[0][0] < wm:
            touched.update(self._release(wm, wall_ms, out))
        if wm is not None and self.rules_on:
            touched.update(self._sweep(wm, wall_ms, out))
        self._finish(touched, out, wall_ms)
        return out

    def finish(self, wall_ms: int) -> StateOut:
        """The end of an input known to be complete (a recorded replay): every partition counts as idle —
        held events are released and deadlines before the newest event time are evaluated. A flow never
        calls this at the end of what Kafka holds now (``--until-eof``): more may come, and a later run
        must give what one continuous run gives, so held events wait in the recovery state."""
        for partition, progress in list(self.watermark.progress.items()):
            self.watermark.observe(partition, progress, True)
        return self.process(BucketInput({}, "", 0), wall_ms)

    def drain(self, wall_ms: int) -> StateOut:
        """The end of what the input holds now (``--until-eof``): events held for other partitions are
        folded in, in their order, so the state shows every event read. Partitions are not declared idle
        and no deadline fires early: a later run over more input continues as one run would."""
        out = StateOut()
        touched = []
        while self._holding:
            _ts, car_id = heapq.heappop(self._holding)
            cs = self.car(car_id)
            if cs.held:
                ready, cs.held = sorted(cs.held, key=_held_order), []
                self._fold_runs(cs, [h[0] for h in ready], [h[1] for h in ready], wall_ms, out)
                touched.append(car_id)
        self._finish(set(touched), out, wall_ms)
        return out

    # -- cars on several partitions: events in event-time order ----------------------------------------
    def _hold(self, cs: CarState, ce: CarEvents, wall_ms: int, out: StateOut) -> None:
        """A car whose devices report on several partitions sees its events in (time, sequence, device)
        order, whatever order the partitions deliver them in: each waits until every partition of the
        car has passed its time (the car's watermark), so 1 or N processes give the same result."""
        cs.held.extend(zip(ce.events, ce.rows(), strict=True))
        self._release_car(cs, wall_ms, out)

    def _release_car(self, cs: CarState, wall_ms: int, out: StateOut) -> None:
        limit = self._car_watermark(cs)
        cs.held.sort(key=_held_order)
        n = 0
        for tel, _attrs in cs.held:
            if tel.ts >= limit:
                break
            n += 1
        if n:
            ready, cs.held = cs.held[:n], cs.held[n:]
            self._fold_runs(cs, [h[0] for h in ready], [h[1] for h in ready], wall_ms, out)
        if cs.held:
            heapq.heappush(self._holding, (cs.held[0][0].ts, cs.car_id))

    def _release(self, wm: int, wall_ms: int, out: StateOut) -> list[int]:
        """Cars holding events the watermark has passed (each is checked against its own watermark)."""
        done: set[int] = set()
        while self._holding and self._holding[0][0] < wm:
            _ts, car_id = heapq.heappop(self._holding)
            if car_id in done:
                continue
            cs = self.car(car_id)
            if cs.held:
                done.add(car_id)
                self._release_car(cs, wall_ms, out)
        return list(done)

    def _fold_runs(
        self, cs: CarState, events: list[Telemetry], attrs: list[Attrs], wall_ms: int, out: StateOut
    ) -> None:
        """Fold events of one car (in the order given), in runs of equal snapshot rows."""
        start, first = 0, attrs[0]
        for i in range(1, len(events)):
            a = attrs[i]
            if a is not first and a != first:
                self._car_events(cs, events[start:i], first[0], first[1], events[i - 1].ts, wall_ms, out)
                start, first = i, a
        run = events[start:] if start else events
        self._car_events(cs, run, first[0], first[1], max(tel.ts for tel in run), wall_ms, out)

    def _car_events(
        self,
        cs: CarState,
        events: list[Telemetry],
        car_row: dict[str, Any] | None,
        children: dict[str, dict[str, Any] | None],
        newest: int,
        wall_ms: int,
        out: StateOut,
    ) -> None:
        """Fold events of one car (in the order given) and evaluate the rules after each."""
        car_id = cs.car_id
        new_car = not cs.device_seen and not cs.values
        attr_changed = False
        if newest >= cs.last_seen and car_row is not None and (car_row != cs.car or children != cs.children):
            cs.car, cs.children = car_row, children
            attr_changed = cs.dirty = True
        values, stamps, seen = cs.values, cs.stamps, cs.device_seen
        inputs, rules_on, engine = self.watched, self.rules_on, self.engine
        devices_changed = False
        for tel in events:
            ts, device, signals = tel.ts, tel.device_id, tel.signals
            filed = cs.deadline
            if filed is not None and filed < ts and rules_on:  # a deadline falls before this event
                limit = min(ts, self._car_watermark(cs)) - 1
                if filed <= limit:
                    self._validate([cs], limit)
                    self._run_deadlines(cs, limit, wall_ms, out)
            last = seen.get(device)
            if last is None:
                if seen and self.lookup is not None:
                    self._validate([cs], ts)  # a new device: are the others still the car's?
                devices_changed = True
                seen[device] = ts
            elif last < ts:
                seen[device] = ts
            stamp = (ts, tel.seq, device)
            if stamp < cs.newest:  # older than what the car already showed: values only where older
                _merge_older(values, stamps, signals, stamp)
                cs.dirty = True
                continue
            # the facts rules read (VehicleFacts.see, inlined: this runs once per event)
            cs.newest = stamp
            cs.device_id = device
            if ts > cs.last_seen:
                cs.last_seen = ts
            speed = signals.get(SPEED)
            if speed is not None and (type(speed) is float or type(speed) is int):
                cs.speed_prev, cs.speed_last = cs.speed_last, (float(speed), ts)
            if signals.get(ENGINE) is True:
                cs.engine_on_at = ts
            if rules_on:
                seen_before = tuple(map(values.get, inputs))
                values.update(signals)
                changed = seen_before != tuple(map(values.get, inputs))
            else:
                values.update(signals)
                changed = False
            stamps.update(dict.fromkeys(signals, stamp))
            cs.dirty = True
            if rules_on and (changed or attr_changed or cs.alerts or new_car):
                now = ts if ts > cs.evaluated_at else cs.evaluated_at
                had_alerts = bool(cs.alerts)
                for e in engine.step(cs, cs.alerts, now, wall_ms=wall_ms):
                    out.outliers.append((car_id, orjson.dumps(e)))
                cs.evaluated_at = now
                if cs.alerts or had_alerts or new_car or (changed and self.time_inputs & signals.keys()):
                    self._refile(cs)
                attr_changed = new_car = False
        if rules_on and (devices_changed or cs.deadline is None):
            self._refile(cs)

    def _car_watermark(self, cs: CarState) -> int:
        """The car's own watermark: every event of its devices older than this has been seen (the oldest
        progress of the partitions they report on; idle ones do not hold it back, and when all are idle
        it is just past the newest)."""
        progress, idle = self.watermark.progress, self.watermark.idle
        parts = cs.partitions
        if len(parts) < cs.expected:  # not every device of the car has reported: wait for all partitions
            return self.watermark.value or 0
        if len(parts) == 1:
            for p in parts.values():
                return progress.get(p, 0) + (1 if p in idle else 0)
        times = [progress.get(p, 0) for p in set(parts.values()) if p not in idle]
        if times:
            return min(times)
        return max((progress.get(p, 0) for p in parts.values()), default=0) + 1

    def _refile(self, cs: CarState) -> None:
        deadline = self.engine.next_deadline(cs, cs.alerts, cs.evaluated_at)
        if deadline is not None:
            self.timers.file(cs.car_id, deadline)
        cs.deadline = self.timers.filed(cs.car_id)

    def _run_deadlines(self, cs: CarState, limit: int, wall_ms: int, out: StateOut) -> None:
        """Evaluate the car at each of its deadlines up to ``limit``; file the next one after it."""
        self.timers.cancel(cs.car_id)
        cs.deadline = None
        engine = self.engine
        while True:
            deadline = engine.next_deadline(cs, cs.alerts, cs.evaluated_at)
            if deadline is None:
                return
            if deadline > limit:
                self.timers.file(cs.car_id, deadline)
                cs.deadline = deadline
                return
            for e in engine.step(cs, cs.alerts, deadline, wall_ms=wall_ms):
                out.outliers.append((cs.car_id, orjson.dumps(e)))
            cs.evaluated_at = deadline

    def _sweep(self, wm: int, wall_ms: int, out: StateOut) -> list[int]:
        due = self.timers.due(wm - 1)  # strictly before the watermark
        if not due:
            return []
        cars = [self.car(car_id) for _, car_id in due]
        self._validate(cars, wm - 1)
        for cs in cars:
            self._run_deadlines(cs, wm, wall_ms, out)
        return [cs.car_id for cs in cars]

    # -- current devices -------------------------------------------------------------------------------
    def _validate(self, cars: Collection[CarState], at: int) -> None:
        """Drop devices that did not belong to their car at ``at`` (the time about to be evaluated)."""
        if self.lookup is None:
            return
        wanted = {d for cs in cars for d in cs.device_seen}
        if not wanted:
            return
        found: Mapping[str, Any] = self.lookup(wanted)
        for cs in cars:
            gone = [d for d in cs.device_seen if car_at(found.get(d), at, self.model) != cs.car_id]
            for d in gone:
                del cs.device_seen[d]
                cs.partitions.pop(d, None)
                cs.dirty = True
            if gone:
                self._refile(cs)

    # -- output ----------------------------------------------------------------------------------------
    def _finish(self, touched: set[int], out: StateOut, wall_ms: int) -> None:
        start = time.thread_time()
        cars, docs = self.cars, self._docs
        for car_id in touched:
            cs = cars[car_id]
            if cs.dirty:
                cs.dirty = False
                cs.version += 1
                cs.updated_at = wall_ms
                rec = cs.record()
                body = orjson.dumps(rec)
                out.states[car_id] = body
                # what the vehicle store reads besides the bytes (indexes, the signal series), as of now:
                # the record's maps go on changing with the car while the store's writer thread works
                out.docs[car_id] = {
                    "car": rec["car"],
                    "last_seen": rec["last_seen"],
                    "location": rec["location"],
                    "version": rec["version"],
                    "values": dict(rec["values"]),
                }
                docs[car_id] = body
        self._unsnapped |= touched
        self.encode_s += time.thread_time() - start


def _order(tel: Telemetry) -> Stamp:
    return (tel.ts, tel.seq, tel.device_id)


def _held_order(h: Held) -> Stamp:
    return (h[0].ts, h[0].seq, h[0].device_id)


def _in_order(events: list[Telemetry]) -> list[Telemetry]:
    """``events`` by (event time, sequence, device); they usually arrive so, and are then returned as
    they are."""
    prev = _order(events[0])
    for tel in events[1:]:
        stamp = _order(tel)
        if stamp < prev:
            return sorted(events, key=_order)
        prev = stamp
    return events


def _in_order_with(events: list[Telemetry], attrs: list[Attrs]) -> tuple[list[Telemetry], list[Attrs]]:
    """``_in_order`` for events with their own rows."""
    ordered = _in_order(events)
    if ordered is events:
        return events, attrs
    at = {id(tel): a for tel, a in zip(events, attrs, strict=True)}
    return ordered, [at[id(tel)] for tel in ordered]


def _merge_older(
    values: dict[str, Scalar], stamps: dict[str, Stamp], new: dict[str, Scalar], stamp: Stamp
) -> None:
    """An out-of-order event: each of its signals wins only where the state holds an older value."""
    for path, value in new.items():
        have = stamps.get(path)
        if have is None or have < stamp:
            values[path] = value
            stamps[path] = stamp


__all__ = ["ATTR", "BucketInput", "CarState", "StateCore", "StateOut", "StateSnapshot"]


def fold_documents(
    events: dict[int, list[Telemetry]], *, now_ms: int = 0, rows: dict[int, dict[str, Any]] | None = None
) -> dict[int, dict[str, Any]]:
    """The state documents of cars after folding ``events`` (no rules): the flow's fold, for tests/tools."""
    core = StateCore(RuleEngine([]))
    cars = {
        car: CarEvents(list(evs), ((rows or {}).get(car), {}), None, 0, max((t.ts for t in evs), default=-1))
        for car, evs in events.items()
    }
    out = core.process(BucketInput(cars, "", 0), now_ms)
    return {car: public_document(orjson.loads(body)) for car, body in out.states.items()}
