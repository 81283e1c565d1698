"""Decoding telemetry, joining it, folding it into vehicle state, and the history's offset index."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from enrich.asof import Merged
from enrich.errors import DecodeError
from enrich.pipeline.encode import enriched_event, fragment
from enrich.pipeline.join import CarEvents
from enrich.pipeline.state import BucketInput, StateCore, fold_documents, public_bytes
from enrich.records import Record
from enrich.rules.engine import RuleEngine
from enrich.tables import DEFAULT_MODEL as MODEL
from enrich.telemetry import decode_telemetry
from stores.parquet_history import HistoryWriter, Intervals, read_history


def msg(signals: object, **fields: object) -> bytes:
    return orjson.dumps({"device_id": "d1", "ts": 1_000, "seq": 3, "signals": signals, **fields})


def test_nested_flat_and_string_values_decode_alike() -> None:
    nested = decode_telemetry(
        msg({"Vehicle": {"Speed": 42.5, "Body": {"Lights": {"Beam": {"Low": {"IsOn": True}}}}}})
    )
    flat = decode_telemetry(msg({"Vehicle.Speed": "42.5", "Vehicle.Body.Lights.Beam.Low.IsOn": "true"}))
    assert (
        nested.signals == flat.signals == {"Vehicle.Speed": 42.5, "Vehicle.Body.Lights.Beam.Low.IsOn": True}
    )
    unknown = decode_telemetry(msg({"Vehicle.Custom.Thing": "x", "Vehicle.LowVoltageSystemState": "LOCK"}))
    assert unknown.signals == {"Vehicle.Custom.Thing": "x", "Vehicle.LowVoltageSystemState": "LOCK"}


@pytest.mark.parametrize(
    ("value", "field_path"),
    [
        (msg({"Vehicle.Speed": "fast"}), "signals.Vehicle.Speed"),
        (msg({"Vehicle": {"Cabin": {"Door": {"Row1": {"DriverSide": {"IsOpen": "maybe"}}}}}}),
         "signals.Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"),
        (msg({"Vehicle.X": [1, 2]}), "signals.Vehicle.X"),
        (msg({"Speed": 1}), "signals.Speed"),
        (msg({}, ts="2024-01-01"), "ts"),
        (msg({}, seq=-1), "seq"),
        (msg({}, device_id=""), "device_id"),
        (msg([]), "signals"),
        (b"\\xff", None),
    ],
)  # fmt: skip
def test_bad_telemetry_names_the_field(value: bytes, field_path: str | None) -> None:
    with pytest.raises(DecodeError) as info:
        decode_telemetry(value)
    assert info.value.field_path == field_path


def merged(device: bool = True, car: bool = True) -> Merged:
    rows = {
        "device": {"device_id": "d1", "car_id": 7} if device else None,
        "car": {"car_id": 7, "status": "ACTIVE"} if car and device else None,
        "reservation": None,
    }
    return Merged(rows, {"device": "L1" if device else None, "car": None, "reservation": None}, 1)


def test_join_status_and_enriched_event() -> None:
    tel = decode_telemetry(msg({"Vehicle.Speed": 1}))
    assert fragment(merged(), MODEL).status == "ok"
    assert fragment(merged(car=False), MODEL).status == "partial"
    assert fragment(merged(device=False), MODEL).status == "missing"
    assert fragment(None, MODEL).status == "missing"
    event = enriched_event(tel, merged(), MODEL, ingested_at=5)
    assert event["event_id"] == "d1:3" and event["car_id"] == 7 and event["ingested_at"] == 5
    assert event["enrichment"] == {"status": "ok", "snapshot_position": "L1"}
    assert list(event)[6:] == ["car", "device", "reservation", "enrichment", "ingested_at"]
    assert enriched_event(tel, None, MODEL, ingested_at=None)["car_id"] is None


def test_state_merge_keeps_the_newest_value_per_signal_in_any_order() -> None:
    def tel(seq: int, ts: int, **sig: float) -> object:
        signals = {f"Vehicle.{k}": v for k, v in sig.items()}
        return decode_telemetry(
            orjson.dumps({"device_id": f"d{seq % 2}", "ts": ts, "seq": seq, "signals": signals})
        )

    events = [tel(1, 100, Speed=10.0), tel(2, 300, Speed=30.0), tel(3, 200, Speed=20.0, Cabin__X=1.0)]

    def fold_one_by_one(order: list[object]) -> dict[str, object]:
        core = StateCore(RuleEngine([]))
        doc: dict[str, object] = {}
        for e in order:  # one batch per event: the worst case for ordering
            out = core.process(BucketInput({7: CarEvents([e], (None, {}), None, 0, e.ts)}, "", 0), 1)  # type: ignore[list-item, attr-defined]
            doc = orjson.loads(public_bytes(out.states[7]))
        return doc

    forward, backward = fold_one_by_one(events), fold_one_by_one(list(reversed(events)))
    assert forward["signals"] == backward["signals"]
    assert forward["signals"]["Vehicle.Speed"]["value"] == 30.0  # type: ignore[index]
    assert forward["signals"]["Vehicle.Cabin__X"]["value"] == 1.0  # type: ignore[index]
    assert forward["last_seen"] == backward["last_seen"] == 300
    assert forward["devices"] == ["d0", "d1"]
    assert fold_documents({7: events})[7]["signals"] == forward["signals"]  # type: ignore[dict-item]


def test_intervals_and_history_replays_do_not_duplicate(tmp_path: Path) -> None:
    iv = Intervals()
    iv.add_all([5, 6, 7, 10, 11, 3])
    assert [x for x in range(0, 14) if x in iv] == [3, 5, 6, 7, 10, 11]
    iv.add(8, 9)
    assert list(zip(iv.starts, iv.ends, strict=True)) == [(3, 3), (5, 11)]
    writer = HistoryWriter(tmp_path)
    rows = [Record("telemetry", 0, o, b"k", b"v%d" % o, 1_700_000_000_000) for o in range(100, 110)]
    writer.write("telemetry", 0, rows[:6], None)
    # A replay from offset 103 after a restart (a fresh writer reads what is on disk).
    HistoryWriter(tmp_path).write("telemetry", 0, rows[3:], None)
    table = read_history(tmp_path, "raw")
    assert sorted(table.column("offset").to_pylist()) == list(range(100, 110))
