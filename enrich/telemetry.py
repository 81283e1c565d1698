"""Decode and validate telemetry: a nested VSS tree or flat dotted paths, numbers sent as strings coerced.

Known signals are coerced to their VSS datatype (``"12.4"`` → 12.4, ``"true"`` → True); unknown signals are
kept as sent. A known signal is a leaf: an object or array where it belongs (``{"Speed": {"value": 5}}``)
is a schema error, never a new signal ``Vehicle.Speed.value``. Errors name the field path
(``signals.Vehicle.Speed``). Messages larger than ``max_bytes`` are refused before they are parsed.

This is the hottest function of the engine (once per event): known signals are looked up in one dict of
kinds, and values that already have their type cost one type check. When the native decoder
(``native/``, module ``enrich_native``) is installed and ``ENRICH_NATIVE`` is not ``0``,
``decode_telemetry`` uses it: same results and errors (``tests/unit/test_native_telemetry.py``), several
times faster, and it hands over the signals' JSON (``Telemetry.signals_json``) so the enriched event splices
it instead of encoding the signals again. ``decode_telemetry_py`` is the reference implementation;
``IMPLEMENTATION`` says which one is active.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

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
MAX_NESTING = (
    32  # levels of a nested signal tree (VSS needs about 8); keeps recursion far from Python's limit
)

Scalar = float | int | bool | str | None


class Telemetry(NamedTuple):
    """One decoded event. A tuple: built once per event, so it must be cheap."""

    device_id: str
    ts: int
    seq: int
    signals: dict[str, Scalar]  # flat VSS path -> coerced value
    signals_json: bytes | None = None  # orjson.dumps(signals), when the decoder made it (the native one does)


def _schema_error(message: str, path: str) -> DecodeError:
    return DecodeError(message, reason="schema_error", field_path=path)


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, Any], depth: int) -> None:
    """``prefix`` ends with a dot and holds ``depth`` segments; known signals are leaves."""
    for key, value in node.items():
        if type(value) is dict:
            path = prefix + key
            if path in _KIND:
                raise _schema_error("a known signal must be a scalar, got an object", f"signals.{path}")
            if depth >= MAX_NESTING:
                raise _schema_error(f"signals nest deeper than {MAX_NESTING} levels", f"signals.{path}")
            _flatten(value, path + ".", out, depth + 1)
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
    try:
        text = repr(value)
    except RecursionError:  # a list nested ~1000 deep (orjson allows 1024 levels)
        return f"a deeply nested {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def decode_telemetry(value: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES) -> Telemetry:
    """Bytes of one telemetry message → ``Telemetry``; raises ``DecodeError`` naming the field."""
    if _native is not None:
        return _native(value, max_bytes)
    return decode_telemetry_py(value, max_bytes)


def decode_telemetry_py(value: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES) -> Telemetry:
    """The reference decoder, in Python (what the native one must match)."""
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
                _flatten(item, "Vehicle.", flat, 1)
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


def load_native(*, honour_env: bool = True) -> Callable[[bytes | None, int], Telemetry] | None:
    """The native decoder's ``decode`` bound to this module's schema, or None: not installed, or turned
    off with ``ENRICH_NATIVE=0`` (unless ``honour_env`` is false, as the equivalence tests ask)."""
    if honour_env and os.environ.get("ENRICH_NATIVE", "1") == "0":
        return None
    try:
        module = importlib.import_module("enrich_native")
    except ImportError:
        return None
    decoder = module.Decoder(
        _KIND,
        telemetry=Telemetry,
        error=DecodeError,
        short=_short,
        fallback=decode_telemetry_py,
        true_words=_TRUE,
        false_words=_FALSE,
        max_nesting=MAX_NESTING,
    )
    decode: Callable[[bytes | None, int], Telemetry] = decoder.decode
    return decode


_native = load_native()
IMPLEMENTATION: Literal["native", "python"] = "python" if _native is None else "native"
