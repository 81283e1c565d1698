"""The native telemetry decoder equals the Python reference (``decode_telemetry_py``) on every input.

For each message both decoders either return the same ``Telemetry`` (device, ts, seq, the same signals in
the same order with values of the same type and repr) and the native signals JSON equals
``orjson.dumps(signals)``, or raise ``DecodeError`` with the same reason and field path (and the same
message, except the wording of JSON syntax errors). The corpus: the simulator's payloads in all three
encodings over many cars and times, hand-written cases for every rule and error path, random floats and
big numbers, and generated and byte-mutated messages (hypothesis, bounded). The enriched event built with
the spliced signals JSON is byte for byte the one built by encoding the signals.

The tests skip when the extension is not built (``scripts/bootstrap`` builds it where cargo exists), and
fail instead under ``ENRICH_REQUIRE_SERVICES=1`` (CI), so CI proves it is built.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrich import telemetry
from enrich.asof import Merged
from enrich.errors import DecodeError
from enrich.pipeline.encode import encode, enriched_event, fragment
from enrich.tables import DEFAULT_MODEL
from simulator.model import Fleet, car_values, encode_signals

Decode = Callable[[bytes | None, int], telemetry.Telemetry]
LIMIT = 1 << 20
KNOWN = sorted(telemetry._KIND)


@pytest.fixture(scope="module")
def native() -> Decode:
    decode = telemetry.load_native(honour_env=False)
    if decode is None:
        reason = "the native decoder (enrich_native) is not built: run scripts/bootstrap with cargo installed"
        if os.environ.get("ENRICH_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return decode


def outcome(decode: Decode, value: bytes | None, limit: int = LIMIT) -> tuple[Any, ...]:
    """What a decoder makes of ``value``, in a form that compares exactly (NaN equals NaN, -0.0 ≠ 0.0)."""
    try:
        tel = decode(value, limit)
    except DecodeError as exc:
        message = None if exc.reason == "not_json" else exc.args[0]
        return ("error", exc.reason, exc.field_path, message)
    signals = [(k, type(v).__name__, repr(v)) for k, v in tel.signals.items()]
    return ("ok", tel.device_id, type(tel.ts), tel.ts, type(tel.seq), tel.seq, signals)


def check(native: Decode, value: bytes | None, limit: int = LIMIT) -> tuple[Any, ...]:
    expected = outcome(telemetry.decode_telemetry_py, value, limit)
    got = outcome(native, value, limit)
    assert got == expected, value
    if expected[0] == "ok":
        tel = native(value, limit)
        assert tel.signals_json == orjson.dumps(tel.signals), value
    return expected


def msg(signals: object, **fields: object) -> bytes:
    return orjson.dumps(
        {"device_id": "dev-1", "ts": 1_700_000_000_000, "seq": 7, "signals": signals, **fields}
    )


def raw(signals: str, head: str = '"device_id":"dev-1","ts":1700000000000,"seq":7') -> bytes:
    return ("{" + head + ',"signals":' + signals + "}").encode()


# --- the simulator's payloads ---------------------------------------------------------------------------


def simulator_corpus(cars: int, times: int) -> Iterator[bytes]:
    rng = random.Random(7)
    start = 1_700_000_000_000
    fleet = Fleet(rng, cars, 1, start)
    for device in fleet.devices.values():
        car = fleet.cars[device.car_id]
        for i in range(times):
            t = start + i * 3_600_000 // times + rng.randrange(600_000)
            for encoding in ("nested", "flat", "flat-strings"):
                signals = encode_signals(car_values(car, t), encoding)
                yield orjson.dumps({"device_id": device.device_id, "ts": t, "seq": i, "signals": signals})


def test_simulator_payloads_decode_alike(native: Decode) -> None:
    n = 0
    for value in simulator_corpus(cars=150, times=40):
        assert check(native, value)[0] == "ok"
        n += 1
    assert n == 150 * 40 * 3


def test_enriched_event_with_spliced_signals_is_byte_identical(native: Decode) -> None:
    rows: dict[str, dict[str, Any] | None] = {
        "device": {"device_id": "dev-000001", "car_id": 1000},
        "car": {"car_id": 1000},
        "reservation": None,
    }
    merged = Merged(rows, {"device": "L1", "car": None, "reservation": None}, devices=1)
    for value in simulator_corpus(cars=20, times=10):
        tel_native = native(value, LIMIT)
        tel_py = telemetry.decode_telemetry_py(value)
        assert tel_native.signals_json is not None and tel_py.signals_json is None
        for m in (merged, None):
            frag = fragment(m, DEFAULT_MODEL)
            for eid, ingested in (("e:1", 99), (None, None)):
                spliced = encode(tel_native, eid, frag, ingested)
                assert spliced == encode(tel_py, eid, frag, ingested)  # the Python path encodes the signals
        doc = enriched_event(tel_native, merged, DEFAULT_MODEL, ingested_at=5)
        assert orjson.dumps(doc) == encode(tel_native, doc["event_id"], fragment(merged, DEFAULT_MODEL), 5)


# --- hand-written cases: every rule and error path ------------------------------------------------------


def _each(*values: object) -> tuple[object, ...]:
    return values


CASES: list[bytes | None] = (
    [
        None,
        b"",
        b" ",
        b"\xef\xbb\xbf{}",
        b"\xff",
        b'{"a": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8
        raw('{"Vehicle.X": "\\ud800"}'),  # a lone surrogate escape
        raw('{"Vehicle.X": "\\udc00x"}'),
        raw('{"Vehicle.X": "\\ud83d\\ude00"}'),
        raw('{"Vehicle.X": "a\\u0000b\\n\\"\\/\\\\\\u00e9\\u2028\\u001f"}'),
        raw('{"Vehicle\\u002eSpeed": "3.5"}'),  # an escaped key is still the known signal
        b"[]",
        b"1",
        b'"x"',
        b"null",
        b"{} x",
        b"{}  \n",
        b'{"a":1,}',
        b"[1,]",
        b"{'a':1}",
        b"NaN",
        raw('{"Vehicle.Speed": NaN}'),
        raw('{"Vehicle.Speed": Infinity}'),
        raw('{"Vehicle.Speed": -Infinity}'),
        raw('{"Vehicle.Speed": 1e400}'),
        raw('{"Vehicle.Speed": -1e400}'),
        raw('{"Vehicle.Speed": 1e-400}'),
        raw('{"Vehicle.Speed": 01}'),
        raw('{"Vehicle.Speed": 1.}'),
        raw('{"Vehicle.Speed": .5}'),
        raw('{"Vehicle.Speed": -}'),
        raw('{"Vehicle.Speed": +1}'),
        raw('{"Vehicle.Speed": 1E+2, "Vehicle.X": -0, "Vehicle.Y": -0.0, "Vehicle.Z": 0.0}'),
        raw('{"Vehicle.X": 18446744073709551615, "Vehicle.Y": 18446744073709551616}'),
        raw('{"Vehicle.X": -9223372036854775808, "Vehicle.Y": -9223372036854775809}'),
        raw('{"Vehicle.X": 123456789012345678901234567890, "Vehicle.Y": 1' + "0" * 400 + "}"),
        raw('{"Vehicle.Speed": 18446744073709551615}'),  # a FLOAT signal keeps an int as sent
        b"\x0c{}",
        b'{"a"  :  1 ,"device_id":"d","ts":1,"seq":0,"signals":{}}\t\r\n',
        # device_id, ts, seq
        msg({}, device_id=""),
        msg({}, device_id="x" * 64),
        msg({}, device_id="x" * 65),
        msg({}, device_id="é" * 64),  # 64 characters, 128 bytes
        msg({}, device_id="😀" * 65),
        msg({}, device_id=5),
        msg({}, device_id=None),
        msg({}, ts=0),
        msg({}, ts=-1),
        msg({}, ts=True),
        msg({}, ts=1.5),
        msg({}, ts="1"),
        msg({}, ts=2**64 - 1),
        raw("{}", '"device_id":"d","ts":18446744073709551616,"seq":0'),
        msg({}, seq=0),
        msg({}, seq=-1),
        msg({}, seq=False),
        msg({}, seq=2**63),
        raw("{}", '"device_id":"d","seq":0'),
        raw("{}", '"ts":1,"seq":0'),
        raw("{}", '"device_id":"d","ts":1'),
        b'{"device_id":"d","ts":1,"seq":0}',
        msg([]),
        msg(None),
        msg("x"),
        msg({}),
        # duplicate keys: first position, last value (orjson, like a dict)
        raw('{"Vehicle.Speed": 1.5, "Vehicle.X": 1, "Vehicle.Speed": "2.5"}'),
        raw("{}", '"device_id":"a","device_id":"b","ts":1,"seq":0'),
        raw("{}", '"device_id":"a","device_id":5,"ts":1,"seq":0'),
        raw('{"Vehicle": {"Speed": {"bad": 1}}, "Vehicle": {"Speed": 3}}'),  # the earlier tree is gone
        raw('{"Vehicle": {"Cabin": {"X": 1}, "Cabin": {"Y": 2}}}'),
        raw('{"Vehicle": {"Speed": 1, "Cabin": {"X": 1}}, "Vehicle.Speed": "4", "Vehicle.Cabin.X": 9}'),
        raw('{"Vehicle.Cabin.X": 9, "Vehicle": {"Cabin": {"X": 1}}}'),
        raw('{"Vehicle": {"A.B": 1, "A": {"B": 2}}}'),
        raw('{"Vehicle": 5}'),
        raw('{"Vehicle": null, "Vehicle.Speed": 1}'),
        raw('{"Vehicle": [1]}'),
        raw('{"Vehicle": {}}'),
        raw('{"Vehicle": {}, "Other": {"X": 1}}'),
        raw('{"Vehicle": {}, "Other": 1}'),
        raw('{"Vehicle": {}, "Vehicle.X": {"a": 1}}'),
        raw('{"Other": {"X": 1}}'),
        raw('{"Speed": 1}'),
        raw('{"Vehicle.Speed": {"value": 5}}'),
        raw('{"Vehicle": {"Speed": {"value": 5}}}'),
        raw('{"Vehicle": {"Body": {"Lights": {"Beam": {"Low": {"IsOn": {"x": true}}}}}}}'),
        raw('{"Vehicle": {"LowVoltageSystemState": {}}}'),
        raw(
            '{"Vehicle": {"Speed": "fast", "Cabin": {"Door": {"Row1": {"DriverSide": {"IsOpen": "maybe"}}}}}}'
        ),
        raw('{"Vehicle": {"Speed": 5, "Custom": {"Deep": {"List": [1, 2]}}}}'),
    ]
    + [
        # FLOAT coercions (Python's float())
        msg({"Vehicle.Speed": v})
        for v in _each(
            "12.5",
            " 12.5 ",
            "\t12.5\n",
            "1e3",
            "1E-3",
            "+1.5",
            "-1.5",
            ".5",
            "5.",
            "1_000.5",
            "1__0",
            "_1",
            "nan",
            "-nan",
            "NaN",
            "inf",
            "-Infinity",
            "infinity",
            "INF",
            "1e400",
            "-1e400",
            "0x10",
            "",
            " ",
            "1.2.3",
            "١٢٫٥",
            "١٢",
            "\u3000 12 \u3000",
            "\x1c12\x1f",
            "\x8512",
            "12\x00",
            "fast",
            "1e",
            "e1",
            "0.1e1",
            "00012.50",
            "12.50",
            "0.000001",
            "0.00001",
            "123456789012345678",
            "9" * 400,
            "-0",
            "0",
            None,
            True,
            False,
            3,
            -3,
            2**64 - 1,
            1.25,
            [],
            [1.5],
            {"a": 1},
            [[[]]],
        )
    ]
    + [
        # BOOL coercions
        msg({"Vehicle.Body.Lights.Beam.Low.IsOn": v})
        for v in _each(
            True,
            False,
            None,
            "true",
            "TRUE",
            " True ",
            "1",
            "0",
            "on",
            "OFF",
            "yes",
            "No",
            "maybe",
            "",
            "\u3000yes\u3000",
            "\x1ctrue\x1f",
            "ｔｒｕｅ",
            "trüe",
            1,
            0,
            2,
            -1,
            1.0,
            0.0,
            1.5,
            2**64 - 1,
            [],
            {},
            ["true"],
        )
    ]
    + [
        # STRING coercions and unknown signals
        msg({"Vehicle.LowVoltageSystemState": v})
        for v in _each("ON", "", None, True, False, 5, 2**63, 1.5, 1e16, 1e-7, [], {})
    ]
    + [msg({"Vehicle.Custom": v}) for v in _each("x", 1, 1.5, None, True, [], {}, [1], {"a": {}})]
    + [
        msg({"Custom": 1}),
        msg({"vehicle.Speed": 1}),
        msg({"Vehicle": 1}),
        msg({"Vehicle.": 1}),
        msg({"": 1}),
        msg({"Vehicle.Speed": 1, "Custom": "x"}),  # the value error comes first in document order
        msg({"Custom": "x", "Vehicle.Speed": "fast"}),
        msg({"Vehicle.Speed": "fast", "Vehicle.Body.Lights.Beam.Low.IsOn": "maybe"}),
        msg({"Vehicle.X": '\x00\x01\x7f\u2028😀"\\/'}),
    ]
)


@pytest.mark.parametrize("value", CASES, ids=lambda v: repr(v)[:60])
def test_hand_written_cases(native: Decode, value: bytes | None) -> None:
    check(native, value)


def test_size_limit_and_inputs_that_are_not_bytes(native: Decode) -> None:
    value = msg({"Vehicle.Speed": 1.5})
    for limit in (0, len(value) - 1, len(value), len(value) + 1):
        check(native, value, limit)
    for other in (bytearray(value), memoryview(value), value.decode()):  # handed to the Python decoder
        assert outcome(native, other) == outcome(telemetry.decode_telemetry_py, other)  # type: ignore[arg-type]


def test_nesting_depth(native: Decode) -> None:
    """A signal tree deeper than MAX_NESTING levels is refused alike; JSON deeper than orjson's 1024 levels
    is not JSON; arrays nested just below that limit (their repr recurses deeply) are reported alike."""
    for depth in (telemetry.MAX_NESTING - 1, telemetry.MAX_NESTING, telemetry.MAX_NESTING + 1, 300, 1030):
        value = raw('{"Vehicle":' + '{"N":' * depth + "1" + "}" * depth + "}")
        check(native, value)
    for depth in (1018, 1021, 1022, 1030):  # the document, signals and a list hold 3 levels
        value = raw('{"Vehicle.Speed":' + "[" * depth + "]" * depth + "}")
        expected = outcome(telemetry.decode_telemetry_py, value)
        assert outcome(native, value)[:3] == expected[:3]


# --- numbers --------------------------------------------------------------------------------------------


def test_random_floats_write_exactly_as_orjson(native: Decode) -> None:
    rng = random.Random(3)
    values: list[float] = []
    while len(values) < 3000:
        f = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(f):
            values.append(f)
    values += [rng.uniform(-1000, 1000) for _ in range(2000)]
    values += [round(rng.uniform(-1000, 1000), rng.randrange(8)) for _ in range(2000)]
    values += [10.0**k * m for k in range(-330, 310, 7) for m in (1.0, 1.5, 9.999999999999999)]
    values = values[: len(values) // 25 * 25]
    for i in range(0, len(values), 25):
        chunk = values[i : i + 25]
        as_numbers = {f"Vehicle.F{j}": f for j, f in enumerate(chunk)}
        assert check(native, msg(as_numbers))[0] == "ok"
        check(native, msg({"Vehicle.Speed": repr(chunk[0])}))  # a number sent as a string
        check(
            native,
            msg(
                {
                    "Vehicle.Speed": f"{chunk[1]:.17g}",
                    "Vehicle.Cabin.HVAC.AmbientAirTemperature": str(chunk[2]),
                }
            ),
        )


def test_long_and_big_number_literals(native: Decode) -> None:
    rng = random.Random(5)
    for _ in range(1500):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 40))).lstrip("0") or "0"
        frac = "".join(rng.choice("0123456789") for _ in range(rng.randrange(0, 30)))
        exp = rng.choice(["", f"e{rng.randrange(-320, 309)}", f"E+{rng.randrange(0, 20)}"])
        sign = rng.choice(["", "-"])
        text = sign + digits + (f".{frac}" if frac else "") + exp
        check(native, raw('{"Vehicle.X": ' + text + ', "Vehicle.Speed": "' + text + '"}'))


# --- generated and mutated messages ---------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["1.5", " 2 ", "1e3", "nan", "inf", "true", "OFF", "1_0", "yes", "", "0", "1"]),
)
keys = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(["Vehicle.Custom", "Vehicle.Cabin", "Vehicle", "Cabin.X", "Vehicle.Body.Lights"]),
    st.text(max_size=6).map(lambda s: "Vehicle." + s),
    st.text(max_size=4),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
segments = st.sampled_from(
    ["Speed", "Cabin", "Door", "Row1", "HVAC", "Body", "X", "Lights", "Beam", "Low", "IsOn"]
)
trees = st.recursive(
    scalars, lambda inner: st.dictionaries(segments, inner, min_size=1, max_size=4), max_leaves=12
)


def _pairs(items: list[tuple[str, object]]) -> str:
    """An object with these pairs in order, duplicates kept (orjson.dumps cannot write those)."""
    return "{" + ",".join(json.dumps(k) + ":" + json.dumps(v) for k, v in items) + "}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(st.tuples(keys, values), max_size=8), tree=st.none() | trees)
def test_generated_signals(native: Decode, items: list[tuple[str, object]], tree: object) -> None:
    if tree is not None:
        items = [("Vehicle", tree), *items]
    check(native, raw(_pairs(items)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    device=st.one_of(st.text(max_size=70), st.integers(), st.none()),
    ts=st.one_of(st.integers(min_value=-5, max_value=2**65), st.booleans(), st.floats(allow_nan=False)),
    seq=st.one_of(st.integers(min_value=-5, max_value=2**65), st.booleans(), st.text(max_size=2)),
)
def test_generated_headers(native: Decode, device: object, ts: object, seq: object) -> None:
    head = _pairs([("device_id", device), ("ts", ts), ("seq", seq)])[1:-1]
    check(native, raw('{"Vehicle.Speed": 1.5}', head))


_SEEDS = [m for i, m in enumerate(simulator_corpus(cars=3, times=2)) if i % 2 == 0] + [
    c for c in CASES[:40] if c
]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["replace", "insert", "delete"]),
            st.floats(min_value=0, max_value=1, exclude_max=True),
            st.sampled_from(list(b'{}[]",:.-+0123456789eE \\tnulfarsVehicl.\x00\x1f\x7f\xc3\xa9\xed\xff')),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_bytes(native: Decode, seed: bytes, edits: list[tuple[str, float, int]]) -> None:
    data = bytearray(seed)
    for op, where, byte in edits:
        i = int(where * len(data)) if data else 0
        if op == "replace" and data:
            data[i] = byte
        elif op == "insert":
            data.insert(i, byte)
        elif data:
            del data[i]
    check(native, bytes(data))


def test_implementation_is_chosen_by_environment(native: Decode) -> None:
    code = "import enrich.telemetry as t; print(t.IMPLEMENTATION)"
    env = {k: v for k, v in os.environ.items() if k != "ENRICH_NATIVE"}

    def run(extra: dict[str, str]) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    assert run({}) == "native"
    assert run({"ENRICH_NATIVE": "0"}) == "python"
