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


def car_id_of(merged: Merged | None) -> int | None:
    device = merged.get(DEVICE) if merged is not None else None
    value = device.get("car_id") if device is not None else None
    return value if isinstance(value, int) else None


def enriched_event(tel: Telemetry, merged: Merged | None, *, attempts: int, now_ms: int) -> dict[str, Any]:
    """The enriched event (schemas/enriched.v1): signals, the joined rows and how the join went."""
    device = merged.get(DEVICE) if merged is not None else None
    return {
        "event_id": f"{tel.device_id}:{tel.seq}",
        "device_id": tel.device_id,
        "car_id": car_id_of(merged),
        "ts": tel.ts,
        "seq": tel.seq,
        "signals": tel.signals,
        "car": merged.get(CAR) if merged is not None else None,
        "device": device,
        "reservation": merged.get(RESERVATION) if merged is not None else None,
        "enrichment": {
            "status": join_status(merged),
            "snapshot_position": merged.positions.get(DEVICE) if merged is not None else None,
            "attempts": attempts,
        },
        "processed_at": now_ms,
    }


@dataclass(slots=True)
class CarUpdate:
    """What one micro-batch says about one car: the newest value per signal, devices, snapshot rows."""

    car_id: int
    signals: dict[str, tuple[int, int, str, Scalar]] = field(
        default_factory=dict
    )  # path -> (ts, seq, dev, v)
    last_seen: int = 0
    devices: set[str] = field(default_factory=set)
    car: dict[str, Any] | None = None
    reservation: dict[str, Any] | None = None

    def add(self, tel: Telemetry, merged: Merged | None) -> None:
        signals = self.signals
        stamp = (tel.ts, tel.seq)
        for path, value in tel.signals.items():
            have = signals.get(path)
            if have is None or (have[0], have[1]) < stamp:
                signals[path] = (tel.ts, tel.seq, tel.device_id, value)
        self.devices.add(tel.device_id)
        if tel.ts >= self.last_seen:
            self.last_seen = tel.ts
            if merged is not None:
                self.car = merged.get(CAR)
                self.reservation = merged.get(RESERVATION)


def merge_state(state: dict[str, Any] | None, upd: CarUpdate, now_ms: int) -> dict[str, Any]:
    """Fold an update into the vehicle state (schemas/vehicle-state.v1). Per signal an older event (event
    time, then sequence) never overwrites a newer value, so merging is idempotent and order-free."""
    if state is None:
        state = {
            "car_id": upd.car_id,
            "last_seen": 0,
            "location": None,
            "signals": {},
            "car": None,
            "reservation": None,
            "devices": [],
            "updated_at": now_ms,
            "version": 0,
        }
    signals: dict[str, dict[str, Any]] = state["signals"]
    changed = False
    for path, (ts, seq, dev, value) in upd.signals.items():
        have = signals.get(path)
        if have is None or (have["ts"], have["seq"]) < (ts, seq):
            signals[path] = {"value": value, "ts": ts, "seq": seq, "device_id": dev}
            changed = True
    if upd.last_seen >= state["last_seen"]:
        state["last_seen"] = upd.last_seen
        if upd.car is not None and (upd.car != state["car"] or upd.reservation != state["reservation"]):
            state["car"] = upd.car
            state["reservation"] = upd.reservation
            changed = True
    new_devices = upd.devices.difference(state["devices"])
    if new_devices:
        state["devices"] = sorted({*state["devices"], *new_devices})
    lat, lon = signals.get(LAT), signals.get(LON)
    if lat is not None and lon is not None and lat["value"] is not None and lon["value"] is not None:
        state["location"] = {"lat": lat["value"], "lon": lon["value"]}
    if changed or new_devices:
        state["version"] += 1
        state["updated_at"] = now_ms
    return state
