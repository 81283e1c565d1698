"""Pure parts of the vehicle store: what a write carries, what a query asks, tag classes, packed meta.

A **tag class** is one distinct combination of a vehicle's resource tags (the carinfo columns named in
``TAG_COLUMNS``, by default ``environment``, ``stage`` and ``fleet``). Access decisions depend only on
those tags, so the API decides once per class and then serves a list from the class indexes — never per
vehicle. A class id is a short stable hash of the canonical tags, so every writer computes the same id
without coordination.

The **meta** of a car is the packed tuple ``class id, fleet, model, status, environment`` (US-separated):
what the list filters compare. The writer keeps it to know, per car and batch, whether any index entry has
to move at all (a car row rarely changes; its telemetry changes every batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson

TAG_COLUMNS: tuple[str, ...] = ("environment", "stage", "fleet")
FILTER_FIELDS: tuple[str, ...] = ("fleet", "model", "status", "environment")
US = "\x1f"
IncidentStatus = Literal["firing", "resolved"]


class VehicleStateWrite(NamedTuple):
    """One car's new state document (``schemas/vehicle-state.v1``): the encoded JSON that is stored as is,
    and, when the caller has it, the document as a dict — the whole document or just its ``car``,
    ``last_seen``, ``location`` and ``version`` (what the indexes need; saves a decode in the hot path)."""

    body: bytes
    doc: Mapping[str, Any] | None = None


Tags = dict[str, str]


def tags_of(car: Mapping[str, Any] | None, columns: Sequence[str] = TAG_COLUMNS) -> Tags:
    """The resource tags of a car row: the tag columns that are set (as strings)."""
    if not car:
        return {}
    return {c: str(car[c]) for c in columns if car.get(c) is not None}


def class_id(tags: Mapping[str, str]) -> str:
    """Stable id of a tag class (12 hex digits of a hash of the canonical tags JSON)."""
    canon = orjson.dumps(dict(sorted(tags.items())))
    return hashlib.blake2b(canon, digest_size=6).hexdigest()


@dataclass(frozen=True, slots=True)
class Meta:
    """What the list filters need of a car, without reading its document."""

    cid: str
    fleet: str
    model: str
    status: str
    environment: str

    def pack(self) -> str:
        return US.join((self.cid, self.fleet, self.model, self.status, self.environment))

    @classmethod
    def unpack(cls, raw: str) -> Meta:
        cid, fleet, model, status, env = raw.split(US)
        return cls(cid, fleet, model, status, env)

    def value(self, name: str) -> str:
        return str(getattr(self, name))


def meta_of(car: Mapping[str, Any] | None, cid: str) -> Meta:
    c = car or {}
    return Meta(cid, *(str(c.get(f) or "") for f in FILTER_FIELDS))


@dataclass(frozen=True, slots=True)
class BBox:
    """A bounding box in degrees (WGS 84); ``west > east`` is not supported (no antimeridian crossing)."""

    south: float
    west: float
    north: float
    east: float

    def contains(self, lat: float, lon: float) -> bool:
        return self.south <= lat <= self.north and self.west <= lon <= self.east


@dataclass(frozen=True, slots=True)
class VehicleQuery:
    """Filters of a vehicle list; all given ones must hold. ``equal`` maps FILTER_FIELDS to a value."""

    equal: Mapping[str, str] = field(default_factory=dict)
    has_active_incident: bool | None = None
    last_seen_after: int | None = None
    last_seen_before: int | None = None
    bbox: BBox | None = None

    def matches_doc(self, doc: Mapping[str, Any], active: bool) -> bool:
        """The same filters, evaluated on a state document (re-check of a fetched page)."""
        car = doc.get("car") or {}
        for name, want in self.equal.items():
            if str(car.get(name) or "") != want:
                return False
        if self.has_active_incident is not None and active != self.has_active_incident:
            return False
        last = int(doc.get("last_seen") or 0)
        if self.last_seen_after is not None and last <= self.last_seen_after:
            return False
        if self.last_seen_before is not None and last >= self.last_seen_before:
            return False
        if self.bbox is not None:
            loc = doc.get("location")
            if not loc or not self.bbox.contains(loc["lat"], loc["lon"]):
                return False
        return True


@dataclass(frozen=True, slots=True)
class IncidentQuery:
    status: IncidentStatus | None = None
    rule_id: str | None = None
    car_id: int | None = None
    since: int | None = None  # starts_at >= since
    until: int | None = None  # starts_at < until


@dataclass(slots=True)
class Page:
    """A page of documents (raw JSON) and where the next one starts (``None``: this was the last).
    ``scanned`` counts the index entries the request looked at (for metrics and tests of boundedness)."""

    items: list[bytes]
    next_after: str | None
    scanned: int = 0


@dataclass(frozen=True, slots=True)
class IncidentMeta:
    cid: str
    status: str
    rule_id: str
    car_id: int
    member: str

    def pack(self) -> str:
        return US.join((self.cid, self.status, self.rule_id, str(self.car_id), self.member))

    @classmethod
    def unpack(cls, raw: str) -> IncidentMeta:
        cid, status, rule, car, member = raw.split(US)
        return cls(cid, status, rule, int(car), member)

    def matches(self, q: IncidentQuery) -> bool:
        if q.status is not None and self.status != q.status:
            return False
        if q.rule_id is not None and self.rule_id != q.rule_id:
            return False
        return q.car_id is None or self.car_id == q.car_id


def incident_member(starts_at: int, incident_id: str) -> str:
    """Sort key of an incident in the lexicographic indexes: start time (13 digits), then id."""
    return f"{starts_at:013d}:{incident_id}"


def incident_record(event: Mapping[str, Any], columns: Sequence[str] = TAG_COLUMNS) -> dict[str, Any]:
    """The stored record of an incident: its newest outlier event plus the tags of its vehicle."""
    snap = event.get("snapshot") or {}
    return {**event, "tags": tags_of(snap.get("car"), columns)}


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change stream (one flow batch): the cars whose state was written (car, version,
    class id) and the incident events of the batch (summaries with their class id)."""

    id: str
    states: list[tuple[int, int, str]]
    incidents: list[dict[str, Any]]


def pack_states(items: Sequence[tuple[int, int, str]]) -> str:
    return ";".join(f"{car},{version},{cid}" for car, version, cid in items)


def unpack_states(raw: str) -> list[tuple[int, int, str]]:
    out = []
    for part in raw.split(";") if raw else ():
        car, version, cid = part.split(",")
        out.append((int(car), int(version), cid))
    return out


def incident_summary(record: Mapping[str, Any], cid: str) -> dict[str, Any]:
    return {
        "incident_id": record["incident_id"],
        "status": record["status"],
        "rule_id": record["rule_id"],
        "severity": record.get("severity"),
        "car_id": record["car_id"],
        "starts_at": record["starts_at"],
        "ends_at": record.get("ends_at"),
        "cid": cid,
    }


def stream_id_after(a: str, b: str) -> bool:
    """Whether stream id ``a`` comes after ``b`` (``ms-seq`` ids compare numerically)."""
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq or 0)) > (int(bm), int(bseq or 0))


# -- recent signal history (the console's charts) -------------------------------------------------------
SERIES_SIGNALS: tuple[str, ...] = (
    "Vehicle.Speed",
    "Vehicle.LowVoltageBattery.CurrentVoltage",
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
    "Vehicle.Powertrain.FuelSystem.RelativeLevel",
)
SERIES_STEP_MS = 30_000  # at most one sample per car per 30 s of event time
SERIES_POINTS = 120  # kept per car: one hour at that step


class SeriesConfig(NamedTuple):
    """A bounded series per car: one sample (event time + ``signals``' values) per ``step_ms`` of the car's
    event time, the newest ``points`` kept. ``points = 0`` turns it off."""

    signals: tuple[str, ...] = SERIES_SIGNALS
    step_ms: int = SERIES_STEP_MS
    points: int = SERIES_POINTS


DEFAULT_SERIES = SeriesConfig()


def signal_values(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Signal path → value of a state document in either form: the flow's stored record (``values`` and
    ``stamps`` maps) or ``schemas/vehicle-state.v1`` (``signals`` objects); ``None`` when it has neither
    (a partial document)."""
    values = doc.get("values")
    if values is not None:
        return values  # type: ignore[no-any-return]
    signals = doc.get("signals")
    if signals is None:
        return None
    return {path: s.get("value") for path, s in signals.items() if isinstance(s, Mapping)}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def series_sample(doc: Mapping[str, Any], signals: Sequence[str]) -> str:
    """``<event time>,<value>,…`` of a state document (empty where a signal is missing or not a number)."""
    values = doc.get("values")
    if values is None:
        values = signal_values(doc) or {}
    parts = [str(doc.get("last_seen") or 0)]
    for name in signals:
        value = values.get(name)
        parts.append(repr(value) if isinstance(value, int | float) and not isinstance(value, bool) else "")
    return ",".join(parts)


def parse_series(
    raws: Sequence[bytes | str], signals: Sequence[str], since_ms: int | None = None
) -> tuple[list[int], dict[str, list[float | None]]]:
    """Samples as columns, in event-time order, one per time (a replayed batch may repeat one)."""
    rows: dict[int, list[str]] = {}
    for raw in raws:
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split(",")
        try:
            ts = int(parts[0])
        except ValueError:
            continue
        if since_ms is None or ts >= since_ms:
            rows[ts] = parts[1:]
    times = sorted(rows)
    cols: dict[str, list[float | None]] = {name: [] for name in signals}
    for ts in times:
        values = rows[ts]
        for i, name in enumerate(signals):
            cell = values[i] if i < len(values) else ""
            try:
                cols[name].append(float(cell) if cell else None)
            except ValueError:
                cols[name].append(None)
    return times, cols


SUMMARY_ROW = ("plate", "model", "fleet", "status", "environment", "stage", "zone")


def summary_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields a fleet overview needs of a state document, in either form
    (``GET /v1/vehicles?view=summary``)."""
    car = doc.get("car") or {}
    values = signal_values(doc) or {}
    running = values.get("Vehicle.Powertrain.CombustionEngine.IsRunning")
    return {
        "car_id": doc.get("car_id"),
        "last_seen": doc.get("last_seen") or 0,
        "location": doc.get("location"),
        "version": doc.get("version") or 0,
        **{f: (None if car.get(f) is None else str(car[f])) for f in SUMMARY_ROW},
        "speed": _num(values.get("Vehicle.Speed")),
        "engine": running if isinstance(running, bool) else None,
    }
