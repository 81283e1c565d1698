"""The roles tables play in the join: which table telemetry keys look up, which car it leads to.

The one place the pipeline names snapshot tables. The defaults describe the reference fleet database
(``deviceinfo`` → ``carinfo`` by ``car_id``, plus the car's active ``reservation``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Roles:
    device: str = "deviceinfo"  # the table the telemetry key (device id) looks up
    car: str = "carinfo"  # the vehicle the device belongs to
    car_key: str = "car_id"  # the device row's column naming its car
    reservation: str = "reservation"  # the car's active reservation (the renting customer)


DEFAULT_ROLES = Roles()
