"""What a name in a rule condition reads: compiled once into an accessor of the evaluation context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from enrich.telemetry import Telemetry

DOORS = (
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen",
)
ENGINE = "Vehicle.Powertrain.CombustionEngine.IsRunning"
SPEED = "Vehicle.Speed"


@dataclass(slots=True)
class VehicleFacts:
    """What rules read about one vehicle (kept by the flow alongside its latest state)."""

    car_id: int
    values: dict[str, Any]
    last_seen: int
    device_seen: dict[str, int]
    car: dict[str, Any] | None
    reservation: dict[str, Any] | None
    speed_prev: tuple[float, int] | None = None  # (km/h, ts) of the reading before the newest
    speed_last: tuple[float, int] | None = None
    engine_on_at: int | None = None  # event time the engine was last seen running
    device_id: str | None = None  # device of the newest event


@dataclass(slots=True)
class Extras:
    """Per-car facts rules need beyond the state document."""

    device_seen: dict[str, int] = field(default_factory=dict)
    speed_prev: tuple[float, int] | None = None
    speed_last: tuple[float, int] | None = None
    engine_on_at: int | None = None
    last_device: str | None = None
    newest: tuple[int, int] = (0, -1)

    def see(self, tel: Telemetry) -> bool:
        """Fold one event in; False when it is older than what the car already showed (out of order)."""
        if self.device_seen.get(tel.device_id, -1) < tel.ts:
            self.device_seen[tel.device_id] = tel.ts
        if (tel.ts, tel.seq) < self.newest:
            return False
        self.newest = (tel.ts, tel.seq)
        self.last_device = tel.device_id
        speed = tel.signals.get(SPEED)
        if type(speed) is float or type(speed) is int:
            self.speed_prev, self.speed_last = self.speed_last, (float(speed), tel.ts)
        if tel.signals.get(ENGINE) is True:
            self.engine_on_at = tel.ts
        return True


class Ctx:
    """One evaluation: the vehicle's facts at event time ``now``."""

    __slots__ = ("facts", "now", "values")

    def __init__(self, facts: VehicleFacts, now: int) -> None:
        self.facts = facts
        self.values = facts.values
        self.now = now


def _any_door_open(c: Ctx) -> bool | None:
    known = [v for v in (c.values.get(d) for d in DOORS) if v is not None]
    return any(known) if known else None


def _all_doors_closed(c: Ctx) -> bool | None:
    anyopen = _any_door_open(c)
    return None if anyopen is None else not anyopen


def _silence(c: Ctx) -> float | None:
    seen = c.facts.device_seen
    return (c.now - min(seen.values())) / 1000 if seen else None


def _speed_drop(c: Ctx) -> float | None:
    prev, last = c.facts.speed_prev, c.facts.speed_last
    if prev is None or last is None or last[1] <= prev[1]:
        return None
    return prev[0] - last[0]


def _speed_rate(c: Ctx) -> float | None:
    prev, last = c.facts.speed_prev, c.facts.speed_last
    if prev is None or last is None or last[1] <= prev[1]:
        return None
    return (prev[0] - last[0]) / ((last[1] - prev[1]) / 1000)


def _engine_off_for(c: Ctx) -> float | None:
    running = c.values.get(ENGINE)
    if running is True:
        return 0.0
    if running is False and c.facts.engine_on_at is not None:
        return (c.now - c.facts.engine_on_at) / 1000
    return None


DERIVED: dict[str, tuple[str, Callable[[Ctx], Any]]] = {
    "any_door_open": ("true when any cabin door is open", _any_door_open),
    "all_doors_closed": ("true when every known door is closed", _all_doors_closed),
    "seconds_since_last_event": (
        "event-time seconds since the quietest device of the car reported",
        _silence,
    ),
    "speed_drop_kmh": ("speed lost between the car's last two speed readings (km/h)", _speed_drop),
    "speed_change_rate_kmh_s": ("that loss divided by the seconds between the readings", _speed_rate),
    "engine_off_for_s": ("seconds since the engine was last seen running (0 while it runs)", _engine_off_for),
}
TIME_DEPENDENT = frozenset({"seconds_since_last_event", "engine_off_for_s"})


def resolve(name: str) -> Callable[[Ctx], Any]:
    """The accessor for ``name``: a derived signal, a snapshot attribute, or a VSS signal."""
    if name in DERIVED:
        return DERIVED[name][1]
    if name == "reservation.active":
        return lambda c: c.facts.reservation is not None
    for prefix in ("car.", "reservation."):
        if name.startswith(prefix):
            column, attr = name[len(prefix) :], prefix[:-1]

            def read(c: Ctx, column: str = column, attr: str = attr) -> Any:
                row = c.facts.car if attr == "car" else c.facts.reservation
                return row.get(column) if row is not None else None

            return read
    return lambda c: c.values.get(name)


ATTR = "@attr"  # stands for "a snapshot attribute (car.*, reservation.*) changed"
_DERIVED_INPUTS: dict[str, tuple[str, ...]] = {
    "any_door_open": DOORS,
    "all_doors_closed": DOORS,
    "speed_drop_kmh": (SPEED,),
    "speed_change_rate_kmh_s": (SPEED,),
    "engine_off_for_s": (ENGINE,),
}


def inputs_of(names: frozenset[str]) -> frozenset[str]:
    """The signals (and ``ATTR``) whose change can change a condition reading ``names``."""
    out: set[str] = set()
    for name in names:
        if name in _DERIVED_INPUTS:
            out.update(_DERIVED_INPUTS[name])
        elif name.startswith(("car.", "reservation.")):
            out.add(ATTR)
        elif name not in DERIVED:
            out.add(name)
    return frozenset(out)
