"""Decode and validate telemetry: a nested VSS tree or flat dotted paths, numbers sent as strings coerced.

Known signals are coerced to their VSS datatype (``"12.4"`` → 12.4, ``"true"`` → True); unknown signals are
kept as sent. A known signal is a leaf: an object or array where it belongs (``{"Speed": {"value": 5}}``)
is a schema error, never a new signal ``Vehicle.Speed.value``. Errors name the field path
(``signals.Vehicle.Speed``). Messages larger than ``max_bytes`` are refused before they are parsed.

This is the hottest function of the engine (once per event): known signals are looked up in one dict of
kinds, and values that already have their type cost one type check.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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
_FLOAT, _BOOL, _STRING = 0, 1, 2
_KIND: dict[str, int] = {
    **dict.fromkeys(FLOAT_SIGNALS, _FLOAT),
    **dict.fromkeys(BOOL_SIGNALS, _BOOL),
    **dict.fromkeys(STRING_SIGNALS, _STRING),
}
_TYPE: dict[str, type] = {path: (float, bool, str)[kind] for path, kind in _KIND.items()}
DEFAULT_MAX_BYTES = 1 << 20

Scalar = float | int | bool | str | None


class Telemetry(NamedTuple):
    """One decoded event. A tuple: built once per event, so it must be cheap."""

    device_id: str
    ts: int
    seq: int
    signals: dict[str, Scalar]  # flat VSS path -> coerced value


def _schema_error(message: str, path: str) -> DecodeError:
    return DecodeError(message, reason="schema_error", field_path=path)


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    """``prefix`` ends with a dot; known signals are leaves."""
    for key, value in node.items():
        if type(value) is dict:
            path = prefix + key
            if path in _KIND:
                raise _schema_error("a known signal must be a scalar, got an object", f"signals.{path}")
            _flatten(value, path + ".", out)
        else:
            out[prefix + key] = value


def _coerce(path: str, kind: int | None, value: Any) -> Scalar:
    """The slow path: a value whose type is not the signal's own (or not a scalar at all)."""
    if kind == _FLOAT:
        if type(value) is str:
            try:
                return float(value)
            except ValueError:
                pass
        elif value is None:
            return None
        raise _schema_error(f"expected a number, got {_short(value)}", f"signals.{path}")
    if kind == _BOOL:
        if value is None:
            return None
        if type(value) is str or type(value) is int or type(value) is float:
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
        raise _schema_error(f"expected a boolean, got {_short(value)}", f"signals.{path}")
    if isinstance(value, list | dict):
        raise _schema_error("signal values must be scalars", f"signals.{path}")
    if kind == _STRING and value is not None:
        return str(value)
    return value  # type: ignore[no-any-return]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def decode_telemetry(value: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES) -> Telemetry:
    """Bytes of one telemetry message → ``Telemetry``; raises ``DecodeError`` naming the field."""
    if value is None:
        raise DecodeError("null message", reason="decode_error")
    if len(value) > max_bytes:
        raise DecodeError(
            f"message of {len(value)} bytes exceeds the limit of {max_bytes}", reason="too_large"
        )
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}", reason="not_json") from exc
    if type(doc) is not dict:
        raise DecodeError("not a JSON object", reason="schema_error")
    device = doc.get("device_id")
    if type(device) is not str or not device or len(device) > 64:
        raise _schema_error("device_id must be a non-empty string of at most 64 characters", "device_id")
    ts = doc.get("ts")
    if type(ts) is not int or ts <= 0:
        raise _schema_error("ts must be epoch milliseconds", "ts")
    seq = doc.get("seq")
    if type(seq) is not int or seq < 0:
        raise _schema_error("seq must be a non-negative integer", "seq")
    raw = doc.get("signals")
    if type(raw) is not dict:
        raise _schema_error("signals must be an object", "signals")
    if "Vehicle" in raw:
        flat: dict[str, Any] = {}
        for key, item in raw.items():
            if type(item) is dict:
                if key != "Vehicle":
                    raise _schema_error("nested signals start at Vehicle", f"signals.{key}")
                _flatten(item, "Vehicle.", flat)
            else:
                flat[key] = item
    else:
        flat = raw
    types = _TYPE
    for path, v in flat.items():
        t = type(v)
        want = types.get(path)
        # Fast path: a value of the signal's own type, or a scalar of an unknown signal, needs no work.
        if t is want:
            continue
        if want is None and t is not dict and t is not list and path.startswith("Vehicle."):
            continue
        if t is str and want is float:  # a number sent as a string: the common coercion
            try:
                flat[path] = float(v)
                continue
            except ValueError:
                pass
        if not path.startswith("Vehicle."):
            raise _schema_error("signal paths start with Vehicle.", f"signals.{path}")
        kind = _KIND.get(path)
        if kind == _FLOAT and t is int:
            continue
        flat[path] = _coerce(path, kind, v)
    return Telemetry(device, ts, seq, flat)
