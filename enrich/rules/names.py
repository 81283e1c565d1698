"""What a name in a rule condition reads, and the per-car facts those names are read from.

A name is a VSS signal (the car's latest value), a snapshot attribute (``<role>.<column>``: the car's row as
``car.*``, each child role of the join model by its name, e.g. ``reservation.*``; ``<child>.active`` is true
while the car has a row of that role) or a derived signal computed from the facts at an event time ``now``.
Derived signals that change as time passes (``seconds_since_last_event``, ``engine_off_for_s``) have an
*anchor*: the event time they count from. The engine uses anchors to work out when time alone can change a
condition (timers), so a quiet car costs nothing until then."""

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
    """What rules read about one vehicle. ``device_seen`` holds the car's *current* devices only (a device
    swapped out of the car is dropped), each with the event time it last reported."""

    car_id: int
    values: dict[str, Any]
    last_seen: int
    device_seen: dict[str, int]
    car: dict[str, Any] | None
    children: dict[str, dict[str, Any] | None]  # child role -> the car's chosen row (None: none)
    speed_prev: tuple[float, int] | None = None  # (km/h, ts) of the reading before the newest
    speed_last: tuple[float, int] | None = None
    engine_on_at: int | None = None  # event time the engine was last seen running
    device_id: str | None = None  # device of the newest event
    newest: tuple[int, int, str] = (0, -1, "")  # (ts, seq, device) of the newest event folded in

    def see(self, tel: Telemetry) -> bool:
        """Fold one event into the rule facts (not the values); False when it is older than what the car
        already showed (out of order), which then changes nothing a rule reads but the device's last seen."""
        ts = tel.ts
        seen = self.device_seen
        if seen.get(tel.device_id, -1) < ts:
            seen[tel.device_id] = ts
        stamp = (ts, tel.seq, tel.device_id)
        if stamp < self.newest:
            return False
        self.newest = stamp
        self.device_id = tel.device_id
        self.last_seen = max(self.last_seen, ts)
        signals = tel.signals
        speed = signals.get(SPEED)
        if speed is not None and (type(speed) is float or type(speed) is int):
            self.speed_prev, self.speed_last = self.speed_last, (float(speed), ts)
        if signals.get(ENGINE) is True:
            self.engine_on_at = ts
        return True


# Kept for `enrich rules test` replays written against the earlier API: facts beyond the state document.
@dataclass(slots=True)
class Extras:
    device_seen: dict[str, int] = field(default_factory=dict)


def _any_door_open(f: VehicleFacts, now: int) -> bool | None:
    v = f.values
    known = [x for x in (v.get(DOORS[0]), v.get(DOORS[1]), v.get(DOORS[2]), v.get(DOORS[3])) if x is not None]
    return any(known) if known else None


def _all_doors_closed(f: VehicleFacts, now: int) -> bool | None:
    anyopen = _any_door_open(f, now)
    return None if anyopen is None else not anyopen


def _silence(f: VehicleFacts, now: int) -> float | None:
    seen = f.device_seen
    return (now - min(seen.values())) / 1000 if seen else None


def _speed_drop(f: VehicleFacts, now: int) -> float | None:
    prev, last = f.speed_prev, f.speed_last
    if prev is None or last is None or last[1] <= prev[1]:
        return None
    return prev[0] - last[0]


def _speed_rate(f: VehicleFacts, now: int) -> float | None:
    prev, last = f.speed_prev, f.speed_last
    if prev is None or last is None or last[1] <= prev[1]:
        return None
    return (prev[0] - last[0]) / ((last[1] - prev[1]) / 1000)


def _engine_off_for(f: VehicleFacts, now: int) -> float | None:
    running = f.values.get(ENGINE)
    if running is True:
        return 0.0
    if running is False and f.engine_on_at is not None:
        return (now - f.engine_on_at) / 1000
    return None


Derived = Callable[[VehicleFacts, int], Any]
DERIVED: dict[str, tuple[str, Derived]] = {
    "any_door_open": ("true when any cabin door is open", _any_door_open),
    "all_doors_closed": ("true when every known door is closed", _all_doors_closed),
    "seconds_since_last_event": (
        "event-time seconds since the quietest of the car's current devices reported",
        _silence,
    ),
    "speed_drop_kmh": ("speed lost between the car's last two speed readings (km/h)", _speed_drop),
    "speed_change_rate_kmh_s": ("that loss divided by the seconds between the readings", _speed_rate),
    "engine_off_for_s": ("seconds since the engine was last seen running (0 while it runs)", _engine_off_for),
}


def _silence_anchor(f: VehicleFacts) -> int | None:
    return min(f.device_seen.values()) if f.device_seen else None


def _engine_anchor(f: VehicleFacts) -> int | None:
    return f.engine_on_at if f.values.get(ENGINE) is False else None


# Derived signals that grow with event time, in seconds since their anchor (None: time changes nothing).
TIME_ANCHORS: dict[str, Callable[[VehicleFacts], int | None]] = {
    "seconds_since_last_event": _silence_anchor,
    "engine_off_for_s": _engine_anchor,
}
TIME_DEPENDENT = frozenset(TIME_ANCHORS)


class Ctx:
    """One evaluation of a single condition (tests, tools): the vehicle's facts at event time ``now``."""

    __slots__ = ("facts", "now", "values")

    def __init__(self, facts: VehicleFacts, now: int) -> None:
        self.facts = facts
        self.values = facts.values
        self.now = now


def attribute_of(name: str) -> tuple[str, str] | None:
    """``("car", "fleet")`` for ``car.fleet``: a snapshot attribute's role and column (None otherwise)."""
    if name.startswith("Vehicle.") or "." not in name:
        return None
    role, column = name.split(".", 1)
    return role, column


def resolve(name: str) -> Callable[[Ctx], Any]:
    """The accessor for ``name`` on a ``Ctx``: a derived signal, a snapshot attribute, or a VSS signal."""
    if name in DERIVED:
        fn = DERIVED[name][1]
        return lambda c: fn(c.facts, c.now)
    attr = attribute_of(name)
    if attr is None:
        return lambda c: c.values.get(name)
    role, column = attr
    if role == "car":
        return lambda c: c.facts.car.get(column) if c.facts.car is not None else None
    if column == "active":
        return lambda c: c.facts.children.get(role) is not None

    def read(c: Ctx) -> Any:
        row = c.facts.children.get(role)
        return row.get(column) if row is not None else None

    return read


def source_of(name: str, derived_var: Callable[[str], str]) -> str:
    """Python source reading ``name`` inside a compiled pack, where ``f`` is the facts, ``v`` their values,
    ``car`` the car row, ``ch`` the child rows by role, ``E`` an empty mapping and ``now`` the event time;
    derived signals come from variables."""
    if name in DERIVED:
        return derived_var(name)
    attr = attribute_of(name)
    if attr is None:
        return f"v.get({name!r})"
    role, column = attr
    if role == "car":
        return f"(car.get({column!r}) if car is not None else None)"
    if column == "active":
        return f"(ch.get({role!r}) is not None)"
    return f"(ch.get({role!r}) or E).get({column!r})"


ATTR = "@attr"  # stands for "a snapshot attribute (car.*, <child role>.*) changed"
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
        elif attribute_of(name) is not None:
            out.add(ATTR)
        elif name not in DERIVED:
            out.add(name)
    return frozenset(out)
