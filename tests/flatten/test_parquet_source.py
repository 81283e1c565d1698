"""The enrichment flow's raw Parquet history as a source: its ``value`` column holds the telemetry JSON."""

from __future__ import annotations

from pathlib import Path

import orjson

from enrich.records import Record
from stores.parquet_history import HistoryWriter
from tests.flatten.helpers import read_tables, run_job

NESTED = {
    "device_id": "d1",
    "ts": 1718000000000,
    "seq": 1,
    "signals": {
        "Vehicle": {
            "Speed": 42.5,
            "Powertrain": {"CombustionEngine": {"IsRunning": True}},
            "Cabin": {"Door": {"Row1": {"DriverSide": {"IsOpen": False}}}},
        }
    },
}
FLAT = {"device_id": "d2", "ts": 1718000001000, "seq": 2, "signals": {"Vehicle.Speed": 12.0}}
FLAT_STRINGS = {"device_id": "d3", "ts": 1718000002000, "seq": 3, "signals": {"Vehicle.Speed": "12.0"}}


def test_raw_history_is_flattened_with_rows_as_lines(tmp_path: Path) -> None:
    history = tmp_path / "history"
    docs: list[bytes | None] = [orjson.dumps(d) for d in (NESTED, FLAT, NESTED)]
    docs += [None, orjson.dumps(FLAT_STRINGS)]  # a tombstone-like null value, then numbers as strings
    rows = [Record("telemetry", 0, 10 + i, b"k", v, 1718000000000 + i) for i, v in enumerate(docs)]
    HistoryWriter(history).write("telemetry", 0, rows, None)
    report = run_job([history / "raw"], tmp_path / "out", dataset="telemetry")
    assert report["records"] == 4 and report["tables"]["telemetry"] == 4
    assert [(e["line"], e["reason"]) for e in report["errors"]] == [(4, "null_value")]
    # devices that send numbers as strings: mixed types on one path, kept in a variant column
    assert [(f["path"], f["change"], f["old_type"], f["new_type"]) for f in report["drift"]] == [
        ('signals."Vehicle.Speed"', "incompatible", "double", "string")
    ]
    rows_out = {r["_line"]: r for r in read_tables(tmp_path / "out")["telemetry"]}
    assert rows_out[1]["signals.vehicle.powertrain.combustion_engine.is_running"] is True
    assert rows_out[1]["signals.vehicle.cabin.door.row1.driver_side.is_open"] is False
    assert rows_out[2]["signals.vehicle_speed"] == 12.0
    assert (
        rows_out[5]["signals.vehicle_speed__v_string"] == "12.0"
        and rows_out[5]["signals.vehicle_speed"] is None
    )
