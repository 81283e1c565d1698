"""Join a telemetry event with its snapshot record, and fold events into the latest state of each vehicle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from enrich.snapshot import Merged
from enrich.telemetry import Scalar, Telemetry

DEVICE, CAR, RESERVATION = "deviceinfo", "carinfo", "reservation"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"


def join_status(merged: Merged | None) -> str:
    """ok: device and car found; partial: the device but not its car; missing: not the device."""
    if merged is None or merged.get(DEVICE) is None:
        return "missing"
    return "ok" if merged.get(CAR) is not None else "partial"


def enriched_event(tel: Telemetry, merged: Merged | None, *, attempts: int, now_ms: int) -> dict[str, Any]:
    """The enriched event (schemas/enriched.v1): signals, the joined rows and how the join went."""
    if merged is None:
        device = car = reservation = position = None
    else:
        rows = merged.rows
        device, car, reservation = rows.get(DEVICE), rows.get(CAR), rows.get(RESERVATION)
        position = merged.positions.get(DEVICE)
    car_id = device.get("car_id") if device is not None else None
    return {
        "event_id": f"{tel.device_id}:{tel.seq}",
        "device_id": tel.device_id,
        "car_id": car_id if isinstance(car_id, int) else None,
        "ts": tel.ts,
        "seq": tel.seq,
        "signals": tel.signals,
        "car": car,
        "device": device,
        "reservation": reservation,
        "enrichment": {
            "status": "missing" if device is None else ("ok" if car is not None else "partial"),
            "snapshot_position": position,
            "attempts": attempts,
        },
        "processed_at": now_ms,
    }


Stamp = tuple[int, int, str]  # event time, sequence, device


@dataclass(slots=True)
class CarUpdate:
    """What one micro-batch says about one car: the newest value per signal, devices, snapshot rows."""

    car_id: int
    values: dict[str, Scalar] = field(default_factory=dict)
    stamps: dict[str, Stamp] = field(default_factory=dict)
    newest: tuple[int, int] = (0, -1)
    oldest: tuple[int, int] = (2**62, 0)
    last_seen: int = 0
    devices: set[str] = field(default_factory=set)
    car: dict[str, Any] | None = None
    reservation: dict[str, Any] | None = None
    events: list[Telemetry] = field(default_factory=list)  # in arrival order, for per-event rule evaluation

    def add(self, tel: Telemetry, merged: Merged | None) -> None:
        stamp = (tel.ts, tel.seq)
        full: Stamp = (tel.ts, tel.seq, tel.device_id)
        if stamp >= self.newest:  # in order (the usual case): C-level dict updates
            self.values.update(tel.signals)
            self.stamps.update(dict.fromkeys(tel.signals, full))
            self.newest = stamp
        else:
            _merge_signals(self.values, self.stamps, tel.signals, full)
        self.oldest = min(self.oldest, stamp)
        self.devices.add(tel.device_id)
        self.events.append(tel)
        if tel.ts >= self.last_seen:
            self.last_seen = tel.ts
            if merged is not None:
                self.car = merged.get(CAR)
                self.reservation = merged.get(RESERVATION)


def _merge_signals(
    values: dict[str, Scalar], stamps: dict[str, Stamp], new: dict[str, Scalar], stamp: Stamp
) -> bool:
    changed = False
    for path, value in new.items():
        have = stamps.get(path)
        if have is None or (have[0], have[1]) < (stamp[0], stamp[1]):
            values[path] = value
            stamps[path] = stamp
            changed = True
    return changed


@dataclass(slots=True)
class VehicleState:
    """The latest state of one car, kept as values + stamps; ``document()`` is schemas/vehicle-state.v1."""

    car_id: int
    values: dict[str, Scalar] = field(default_factory=dict)
    stamps: dict[str, Stamp] = field(default_factory=dict)
    newest: tuple[int, int] = (0, -1)
    last_seen: int = 0
    car: dict[str, Any] | None = None
    reservation: dict[str, Any] | None = None
    devices: list[str] = field(default_factory=list)
    updated_at: int = 0
    version: int = 0

    def merge(self, upd: CarUpdate, now_ms: int) -> bool:
        """Fold ``upd`` in; per signal an older event (event time, then sequence) never overwrites a newer
        value, so merging is idempotent and order-free. True when anything changed."""
        if upd.oldest > self.newest:  # everything in the update is newer: C-level dict updates
            self.values.update(upd.values)
            self.stamps.update(upd.stamps)
            changed = bool(upd.values)
        else:
            changed = False
            for path, stamp in upd.stamps.items():
                have = self.stamps.get(path)
                if have is None or (have[0], have[1]) < (stamp[0], stamp[1]):
                    self.values[path] = upd.values[path]
                    self.stamps[path] = stamp
                    changed = True
        self.newest = max(self.newest, upd.newest)
        if upd.last_seen >= self.last_seen:
            self.last_seen = upd.last_seen
            if upd.car is not None and (upd.car != self.car or upd.reservation != self.reservation):
                self.car, self.reservation = upd.car, upd.reservation
                changed = True
        new_devices = upd.devices.difference(self.devices)
        if new_devices:
            self.devices = sorted({*self.devices, *new_devices})
            changed = True
        if changed:
            self.version += 1
            self.updated_at = now_ms
        return changed

    def document(self) -> dict[str, Any]:
        stamps = self.stamps
        signals = {
            path: {
                "value": value,
                "ts": stamps[path][0],
                "seq": stamps[path][1],
                "device_id": stamps[path][2],
            }
            for path, value in self.values.items()
        }
        lat, lon = self.values.get(LAT), self.values.get(LON)
        return {
            "car_id": self.car_id,
            "last_seen": self.last_seen,
            "location": {"lat": lat, "lon": lon} if lat is not None and lon is not None else None,
            "signals": signals,
            "car": self.car,
            "reservation": self.reservation,
            "devices": self.devices,
            "updated_at": self.updated_at,
            "version": self.version,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> VehicleState:
        signals = doc["signals"]
        stamps = {p: (v["ts"], v["seq"], v["device_id"]) for p, v in signals.items()}
        return cls(
            car_id=doc["car_id"],
            values={p: v["value"] for p, v in signals.items()},
            stamps=stamps,
            newest=max(((s[0], s[1]) for s in stamps.values()), default=(0, -1)),
            last_seen=doc["last_seen"],
            car=doc["car"],
            reservation=doc["reservation"],
            devices=list(doc["devices"]),
            updated_at=doc["updated_at"],
            version=doc["version"],
        )


def merge_state(state: dict[str, Any] | None, upd: CarUpdate, now_ms: int) -> dict[str, Any]:
    """Functional form of ``VehicleState.merge`` on documents (schemas/vehicle-state.v1)."""
    vs = (
        VehicleState.from_document(state)
        if state is not None
        else VehicleState(upd.car_id, updated_at=now_ms)
    )
    vs.merge(upd, now_ms)
    return vs.document()
