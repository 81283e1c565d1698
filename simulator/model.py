"""The simulated fleet: cars, devices, reservations, and believable signal dynamics (pure, no I/O).

A car's state is a function of event time: it alternates trips (engine on, moving between two places,
speed varying, 12 V battery charging) and parking (engine off, lights off, doors closed after the driver
leaves, battery slowly draining, cabin drifting to ambient). Injections override that state in their
windows. Being a function of time keeps per-event cost low and makes runs reproducible from the seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from simulator.scenarios import LOW_VOLTAGE, NEAR_VOLTAGE, Injection

MODELS = ("Hyundai Avante", "Kia Ray", "Kia Niro EV", "Hyundai Ioniq 5", "Tesla Model 3", "Renault Zoe")
FLEETS = ("seoul-central", "seoul-gangnam", "busan", "incheon-airport")
DEVICE_KINDS = ("telematics", "obd", "dashcam")
FIRST_NAMES = ("Minji", "Jisoo", "Hyun", "Alex", "Sam", "Noor", "Lena", "Tomas", "Yuna", "Daniel")
DOORS = (
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen",
)
DOOR_OPEN_S = 8.0  # doors open right after parking and right before leaving
RAMP_S = 40.0  # seconds to reach cruising speed / to come to a stop


Encoding = Literal["nested", "flat", "flat-strings"]  # how a device sends its signals (telemetry.v1)


@dataclass(slots=True)
class Car:
    car_id: int
    plate: str
    model: str
    fleet: str
    zone: str
    status: str
    home: tuple[float, float]
    away: tuple[float, float]
    trip_s: float
    park_s: float
    phase_s: float
    night_lights: bool
    tyre_kpa: int
    injections: list[Injection] = field(default_factory=list)
    environment: str = "prod"  # resource tags for the API's access policies (see api/policies)
    stage: str = "prod"

    def row(self, updated_at: int) -> dict[str, Any]:
        return {
            "car_id": self.car_id,
            "plate": self.plate,
            "model": self.model,
            "fleet": self.fleet,
            "status": self.status,
            "zone": self.zone,
            "environment": self.environment,
            "stage": self.stage,
            "updated_at": updated_at,
        }


@dataclass(slots=True)
class Device:
    device_id: str
    car_id: int
    kind: str
    firmware: str
    installed_at: int
    encoding: Encoding
    seq: int = 0

    def row(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "car_id": self.car_id,
            "kind": self.kind,
            "firmware": self.firmware,
            "installed_at": self.installed_at,
        }


@dataclass(slots=True)
class Reservation:
    reservation_id: int
    car_id: int
    customer_name: str
    customer_email: str
    customer_phone: str
    starts_at: int
    ends_at: int | None
    status: str

    def row(self) -> dict[str, Any]:
        return {
            "reservation_id": self.reservation_id,
            "car_id": self.car_id,
            "customer_name": self.customer_name,
            "customer_email": self.customer_email,
            "customer_phone": self.customer_phone,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "status": self.status,
        }


class Fleet:
    """Cars, their devices and reservations, generated from a seed."""

    def __init__(self, rng: random.Random, vehicles: int, devices_per_car: int, start_ms: int) -> None:
        self.rng = rng
        self.start_ms = start_ms
        self.cars: dict[int, Car] = {}
        self.devices: dict[str, Device] = {}
        self.reservations: dict[int, Reservation] = {}
        self.active_reservation: dict[int, int] = {}
        self._next_device = 1
        self._next_reservation = 1
        for i in range(vehicles):
            car_id = 1000 + i
            lat, lon = 37.45 + rng.random() * 0.2, 126.85 + rng.random() * 0.3
            trip = rng.uniform(600, 2400)
            self.cars[car_id] = Car(
                car_id=car_id,
                plate=f"{rng.randint(10, 99)}{'가나다라마바사'[i % 7]}{rng.randint(1000, 9999)}",
                model=MODELS[i % len(MODELS)],
                fleet=FLEETS[rng.randrange(len(FLEETS))],
                zone=f"Z{rng.randint(1, 40):02d}",
                status="ACTIVE",
                home=(lat, lon),
                away=(lat + rng.uniform(-0.05, 0.05), lon + rng.uniform(-0.05, 0.05)),
                trip_s=trip,
                park_s=rng.uniform(900, 5400),
                phase_s=rng.uniform(0, 8000),
                night_lights=rng.random() < 0.5,
                tyre_kpa=232 + (i % 7),
                # every 4th car is in the partners' beta programme; a fifth of those already at stage prod
                environment="beta" if i % 4 == 3 else "prod",
                stage="prod" if i % 4 != 3 or i % 20 == 3 else "pilot",
            )
            for _ in range(devices_per_car):
                self.new_device(car_id, installed_at=start_ms - rng.randint(86_400_000, 400 * 86_400_000))
            if rng.random() < 0.3:
                self.start_reservation(car_id, start_ms - rng.randint(60_000, 3_600_000))

    def new_device(self, car_id: int, installed_at: int) -> Device:
        n = self._next_device
        self._next_device += 1
        kind = DEVICE_KINDS[n % len(DEVICE_KINDS)] if n > 1 else "telematics"
        encoding: Encoding = ("nested", "flat", "flat-strings")[n % 3]
        device = Device(f"dev-{n:06d}", car_id, kind, f"{1 + n % 3}.{n % 7}.0", installed_at, encoding)
        self.devices[device.device_id] = device
        return device

    def devices_of(self, car_id: int) -> list[Device]:
        return [d for d in self.devices.values() if d.car_id == car_id]

    def start_reservation(self, car_id: int, starts_at: int) -> Reservation:
        n = self._next_reservation
        self._next_reservation += 1
        name = f"{FIRST_NAMES[n % len(FIRST_NAMES)]} {chr(65 + n % 26)}."
        res = Reservation(
            reservation_id=n,
            car_id=car_id,
            customer_name=name,
            customer_email=f"customer{n}@example.com",
            customer_phone=f"+82-10-{n % 10000:04d}-{(n * 7919) % 10000:04d}",
            starts_at=starts_at,
            ends_at=None,
            status="ACTIVE",
        )
        self.reservations[n] = res
        self.active_reservation[car_id] = n
        return res

    def end_reservation(self, car_id: int, ends_at: int) -> Reservation | None:
        rid = self.active_reservation.pop(car_id, None)
        if rid is None:
            return None
        res = self.reservations[rid]
        res.status = "ENDED"
        res.ends_at = ends_at
        return res


# Signal order of the value tuple that ``car_values`` returns and the encoders below consume.
SIGNALS = (
    "Vehicle.Speed",
    "Vehicle.CurrentLocation.Latitude",
    "Vehicle.CurrentLocation.Longitude",
    "Vehicle.Powertrain.CombustionEngine.IsRunning",
    "Vehicle.LowVoltageSystemState",
    "Vehicle.Body.Lights.Beam.Low.IsOn",
    "Vehicle.Body.Lights.Beam.High.IsOn",
    *DOORS,
    "Vehicle.LowVoltageBattery.CurrentVoltage",
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
    "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure",
    "Vehicle.Cabin.HVAC.AmbientAirTemperature",
)
_NUMERIC = (0, 1, 2, 11, 12, 13, 14)  # positions of numeric values in SIGNALS
Values = tuple[float, float, float, bool, str, bool, bool, bool, bool, bool, bool, float, float, int, float]
_sin = math.sin
_exp = math.exp
_TWO_PI_24 = 2 * math.pi / 24


def car_values(car: Car, t_ms: int) -> Values:
    """The car's signal values at event time ``t_ms``, in ``SIGNALS`` order (hot path: keep it lean)."""
    t = t_ms / 1000.0
    inj: Injection | None = None
    if car.injections:
        for candidate in car.injections:
            lo, hi = candidate.park_window()
            if lo <= t_ms <= hi:
                inj = candidate
                break
    cycle = car.trip_s + car.park_s
    k, pos = divmod(t + car.phase_s, cycle)
    hour = (t / 3600.0 + 9) % 24  # Korea local time
    if pos < car.trip_s and inj is None:  # driving
        a, b = (car.home, car.away) if int(k) % 2 == 0 else (car.away, car.home)
        frac = pos / car.trip_s
        speed = 38.0 + 22.0 * _sin(pos / 47.0) + 9.0 * _sin(pos / 7.3 + car.phase_s)
        ramp = min(pos, car.trip_s - pos) / RAMP_S  # pull away and come to a stop smoothly
        if ramp < 1.0:
            speed *= ramp
        return (
            round(speed if speed > 0 else 0.0, 1),
            round(a[0] + (b[0] - a[0]) * frac, 6),
            round(a[1] + (b[1] - a[1]) * frac, 6),
            True,
            "ON",
            hour >= 18 or hour < 6 or car.night_lights,
            False,
            False,
            False,
            False,
            False,
            round(14.1 + 0.2 * _sin(pos / 30.0), 2),
            round(50.0 + 40.0 * _sin(t / 7200.0 + car.phase_s), 1),
            car.tyre_kpa,
            round(21.5 + 0.5 * _sin(pos / 90.0), 1),
        )
    if inj is None:
        lat, lon = car.away if int(k) % 2 == 0 else car.home
        parked_for = pos - car.trip_s
        door_open = parked_for < DOOR_OPEN_S or cycle - pos < DOOR_OPEN_S
    else:
        lat, lon = car.home
        parked_for = (t_ms - inj.park_window()[0]) / 1000.0
        door_open = parked_for < DOOR_OPEN_S
    voltage = 12.65 - parked_for / 36000.0
    ambient = 15.0 + 10.0 * _sin((hour - 9) * _TWO_PI_24)
    low_beam = False
    if inj is not None and inj.starts_at <= t_ms < inj.ends_at:
        if inj.scenario == "headlights-left-on":
            low_beam = True
            door_open = inj.variant == "door-open"
        elif inj.scenario == "low-battery":
            voltage = NEAR_VOLTAGE if inj.variant == "near-threshold" else LOW_VOLTAGE
    return (
        0.0,
        lat,
        lon,
        False,
        "OFF" if parked_for < 60 else "LOCK",
        low_beam,
        False,
        door_open,
        False,
        False,
        False,
        round(voltage if voltage > 12.2 or inj is not None else 12.2, 2),
        round(50.0 + 40.0 * _sin(t / 7200.0 + car.phase_s), 1),
        car.tyre_kpa,
        round(ambient + (21.5 - ambient) * _exp(-parked_for / 1800.0), 1),
    )


def car_signals(car: Car, t_ms: int) -> dict[str, Any]:
    """The car's signals as flat VSS paths → value."""
    return dict(zip(SIGNALS, car_values(car, t_ms), strict=True))


def silenced(device: Device, car: Car, t_ms: int) -> bool:
    """True while a device-silent injection keeps this device quiet."""
    return any(
        inj.scenario == "device-silent"
        and inj.device_id == device.device_id
        and inj.starts_at <= t_ms < inj.ends_at
        for inj in car.injections
    )


def encode_signals(v: Values, encoding: Encoding) -> dict[str, Any]:
    """Shape the values as the device sends them: a nested VSS tree, flat paths, or flat strings."""
    if encoding == "flat":
        return dict(zip(SIGNALS, v, strict=True))
    if encoding == "flat-strings":
        items = list(v)
        for i in _NUMERIC:  # devices that send numbers as strings
            items[i] = str(items[i])
        return dict(zip(SIGNALS, items, strict=True))
    return {
        "Vehicle": {
            "Speed": v[0],
            "CurrentLocation": {"Latitude": v[1], "Longitude": v[2]},
            "Powertrain": {
                "CombustionEngine": {"IsRunning": v[3]},
                "TractionBattery": {"StateOfCharge": {"Current": v[12]}},
            },
            "LowVoltageSystemState": v[4],
            "Body": {"Lights": {"Beam": {"Low": {"IsOn": v[5]}, "High": {"IsOn": v[6]}}}},
            "Cabin": {
                "Door": {
                    "Row1": {"DriverSide": {"IsOpen": v[7]}, "PassengerSide": {"IsOpen": v[8]}},
                    "Row2": {"DriverSide": {"IsOpen": v[9]}, "PassengerSide": {"IsOpen": v[10]}},
                },
                "HVAC": {"AmbientAirTemperature": v[14]},
            },
            "LowVoltageBattery": {"CurrentVoltage": v[11]},
            "Chassis": {"Axle": {"Row1": {"Wheel": {"Left": {"Tire": {"Pressure": v[13]}}}}}},
        }
    }
