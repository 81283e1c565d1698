"""Decode and validate telemetry: a nested VSS tree or flat dotted paths, numbers sent as strings coerced.

Known signals are coerced to their VSS datatype (``"12.4"`` → 12.4, ``"true"`` → True); unknown signals are
kept as sent. Errors name the field path (``signals.Vehicle.Speed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from enrich.errors import DecodeError

# VSS datatypes of the signals the engine reasons about; anything else passes through untouched.
BOOL_SIGNALS = frozenset(
    {
        "Vehicle.Powertrain.CombustionEngine.IsRunning",
        "Vehicle.Body.Lights.Beam.Low.IsOn",
        "Vehicle.Body.Lights.Beam.High.IsOn",
        "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
        "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen",
        "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen",
        "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen",
    }
)
FLOAT_SIGNALS = frozenset(
    {
        "Vehicle.Speed",
        "Vehicle.CurrentLocation.Latitude",
        "Vehicle.CurrentLocation.Longitude",
        "Vehicle.LowVoltageBattery.CurrentVoltage",
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure",
        "Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure",
        "Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.Pressure",
        "Vehicle.Chassis.Axle.Row2.Wheel.Right.Tire.Pressure",
        "Vehicle.Cabin.HVAC.AmbientAirTemperature",
    }
)
STRING_SIGNALS = frozenset({"Vehicle.LowVoltageSystemState"})
_TRUE = frozenset({"true", "1", "on", "yes"})
_FALSE = frozenset({"false", "0", "off", "no"})

Scalar = float | int | bool | str | None


@dataclass(frozen=True, slots=True)
class Telemetry:
    device_id: str
    ts: int
    seq: int
    signals: dict[str, Scalar]  # flat VSS path -> coerced value


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in node.items():
        path = f"{prefix}.{key}"
        if type(value) is dict:
            _flatten(value, path, out)
        else:
            out[path] = value


def _coerce(path: str, value: Any) -> Scalar:
    if path in FLOAT_SIGNALS:
        kind = type(value)
        if kind is float or kind is int:
            return value  # type: ignore[no-any-return]
        if kind is str:
            try:
                return float(value)
            except ValueError:
                pass
        elif value is None:
            return None
        raise DecodeError(
            f"expected a number, got {value!r}", reason="schema_error", field_path=f"signals.{path}"
        )
    if path in BOOL_SIGNALS:
        if value is True or value is False or value is None:
            return value  # type: ignore[no-any-return,unused-ignore]
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise DecodeError(
            f"expected a boolean, got {value!r}", reason="schema_error", field_path=f"signals.{path}"
        )
    if isinstance(value, list | dict):
        raise DecodeError(
            "signal values must be scalars", reason="schema_error", field_path=f"signals.{path}"
        )
    if path in STRING_SIGNALS and value is not None:
        return str(value)
    return value  # type: ignore[no-any-return]


def decode_telemetry(value: bytes | None) -> Telemetry:
    """Bytes of one telemetry message → ``Telemetry``; raises ``DecodeError`` naming the field."""
    if value is None:
        raise DecodeError("null message", reason="decode_error")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}", reason="not_json") from exc
    if type(doc) is not dict:
        raise DecodeError("not a JSON object", reason="schema_error")
    device = doc.get("device_id")
    if type(device) is not str or not device or len(device) > 64:
        raise DecodeError(
            "device_id must be a non-empty string", reason="schema_error", field_path="device_id"
        )
    ts = doc.get("ts")
    if type(ts) is not int or ts <= 0:
        raise DecodeError("ts must be epoch milliseconds", reason="schema_error", field_path="ts")
    seq = doc.get("seq")
    if type(seq) is not int or seq < 0:
        raise DecodeError("seq must be a non-negative integer", reason="schema_error", field_path="seq")
    raw = doc.get("signals")
    if type(raw) is not dict:
        raise DecodeError("signals must be an object", reason="schema_error", field_path="signals")
    if "Vehicle" in raw:
        flat: dict[str, Any] = {}
        for key, item in raw.items():
            if type(item) is dict:
                if key != "Vehicle":
                    raise DecodeError(
                        "nested signals start at Vehicle", reason="schema_error", field_path=f"signals.{key}"
                    )
                _flatten(item, key, flat)
            else:
                flat[key] = item
    else:
        flat = raw
    for path, v in flat.items():
        if not path.startswith("Vehicle."):
            raise DecodeError(
                "signal paths start with Vehicle.", reason="schema_error", field_path=f"signals.{path}"
            )
        t = type(v)
        # Fast path: numbers where numbers belong and booleans where booleans belong need no work.
        if t is float or t is int:
            if path not in BOOL_SIGNALS and path not in STRING_SIGNALS:
                continue
        elif t is bool:
            if path not in FLOAT_SIGNALS:
                continue
        elif t is str and path not in FLOAT_SIGNALS and path not in BOOL_SIGNALS:
            continue
        flat[path] = _coerce(path, v)
    return Telemetry(device, ts, seq, flat)
