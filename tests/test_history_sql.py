"""``enrich sql`` without services: views over a history written by the flows' own writer, lake tables, empty
kinds, pruning, output formats, parameters and errors."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from enrich.records import EnrichedColumns, Record
from stores.history_sql import EXAMPLES, HistorySQL, SqlError, parse_params
from stores.parquet_history import HistoryWriter

HOUR = 3_600_000
T0 = 1_718_000_000_000 - 1_718_000_000_000 % HOUR  # the start of an hour


def enriched_row(offset: int, car: int, ts: int, speed: float) -> tuple[int, str, int, int, str, bytes]:
    event_id = f"d{car}:{offset}"
    doc = {"event_id": event_id, "car_id": car, "ts": ts, "seq": offset,
           "signals": {"Vehicle.Speed": speed, "Vehicle.LowVoltageBattery.CurrentVoltage": 12.5}}  # fmt: skip
    return offset, event_id, car, ts, "ok", orjson.dumps(doc)


@pytest.fixture
def history(tmp_path: Path) -> Path:
    root = tmp_path / "history"
    w = HistoryWriter(root)
    rows = [enriched_row(i, 1000 + i % 3, T0 + i * 600_000, float(i)) for i in range(12)]  # two hours
    raw = [Record("telemetry", 0, i, b"k", b"{}", T0 + i * 600_000) for i in range(12)]
    w.write("telemetry", 0, raw, EnrichedColumns(*(list(col) for col in zip(*rows, strict=True))))
    events = [
        ("a", "r1", "firing", 1000, T0),
        ("a", "r1", "resolved", 1000, T0),
        ("b", "r2", "firing", 1001, T0 + 86_400_000),
    ]
    outliers = [
        Record(
            "outliers",
            0,
            i,
            str(car).encode(),
            orjson.dumps(
                {"incident_id": iid, "rule_id": rule, "status": st, "car_id": car, "starts_at": start}
            ),
            T0 + i,
        )
        for i, (iid, rule, st, car, start) in enumerate(events)
    ]
    w.write("outliers", 0, outliers, None, raw_kind="outliers")
    w.close()
    return root


def test_views_examples_and_pruning(history: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    (lake / "trips" / "date=2024-06-10").mkdir(parents=True)
    pq.write_table(pa.table({"report_id": ["x", "y"]}), lake / "trips" / "date=2024-06-10" / "p.parquet")
    (lake / "_staging" / "trips").mkdir(parents=True)  # not a table
    (lake / "enriched").mkdir()  # a name taken by the history: not registered
    pq.write_table(pa.table({"a": [1]}), lake / "enriched" / "p.parquet")
    db = HistorySQL(history, [lake])
    names = {v.name: v for v in db.views}
    assert set(names) == {"raw", "enriched", "outliers", "incidents", "trips"}
    assert any("enriched" in note and "name taken" in note for note in db.skipped)
    assert db.arrow("select count(*) n, min(date) d from trips").to_pylist() == [
        {"n": 2, "d": dt.date(2024, 6, 10)}
    ]
    per_hour = db.arrow(EXAMPLES["events-per-car-per-hour"][1]).to_pylist()
    assert sum(r["events"] for r in per_hour) == 12 and {r["hour"] for r in per_hour} == {
        T0 // HOUR % 24,
        (T0 // HOUR + 1) % 24,
    }
    incidents = db.arrow(EXAMPLES["incidents-per-rule-per-day"][1]).to_pylist()
    assert [(r["rule_id"], r["incidents"]) for r in incidents] == [("r1", 1), ("r2", 1)]
    sig = db.arrow(EXAMPLES["signal-history"][1], {"car": 1001}).to_pylist()
    assert [r["speed_kmh"] for r in sig] == [1.0, 4.0, 7.0, 10.0] and {r["battery_12v"] for r in sig} == {
        12.5
    }
    # pruning: an unreadable file in another partition is never opened by a query on this one
    bad = history / "enriched" / "date=2030-01-01" / "hour=00"
    bad.mkdir(parents=True)
    (bad / "broken.parquet").write_bytes(b"not parquet")
    db = HistorySQL(history)
    hour = (T0 // HOUR) % 24
    date = dt.datetime.fromtimestamp(T0 / 1000, tz=dt.UTC).date()
    got = db.arrow(EXAMPLES["one-hour"][1], {"date": str(date), "hour": hour}).to_pylist()
    assert got == [{"status": "ok", "events": 6, "cars": 3}]
    with pytest.raises(SqlError, match=r"broken\.parquet"):
        db.arrow("select count(*) from enriched")


def test_empty_history_has_empty_views(tmp_path: Path) -> None:
    db = HistorySQL(tmp_path / "none")
    for view in ("raw", "enriched", "outliers", "incidents"):
        assert db.arrow(f"select count(*) n from {view}").to_pylist() == [{"n": 0}]
    assert db.arrow(EXAMPLES["incidents-per-rule-per-day"][1]).num_rows == 0
    with pytest.raises(SqlError, match="syntax error"):
        db.arrow("selec 1")


def test_cli_formats_and_out(history: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["sql", "--history", str(history), "--lake", str(tmp_path / "no-lake")]
    q = "select car_id, count(*) n from enriched group by all order by car_id"
    r = runner.invoke(app, [*base, q, "-f", "csv"])
    assert r.exit_code == 0, r.output
    assert list(csv.DictReader(io.StringIO(r.stdout))) == [
        {"car_id": str(c), "n": "4"} for c in (1000, 1001, 1002)
    ]
    r = runner.invoke(app, [*base, q, "-f", "json"])
    assert json.loads(r.stdout) == [{"car_id": c, "n": 4} for c in (1000, 1001, 1002)]
    r = runner.invoke(app, [*base, q, "-f", "jsonl"])
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        {"car_id": c, "n": 4} for c in (1000, 1001, 1002)
    ]
    out = tmp_path / "o.parquet"
    r = runner.invoke(
        app, [*base, "--example", "signal-history", "-p", "car=1000", "-f", "parquet", "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert pq.read_table(out).column("speed_kmh").to_pylist() == [0.0, 3.0, 6.0, 9.0]
    assert runner.invoke(app, [*base, "select nope"]).exit_code == 1
    assert runner.invoke(app, [*base, q, "-f", "parquet"]).exit_code == 2  # parquet needs --out
    assert runner.invoke(app, [*base, "--example", "nope"]).exit_code == 2
    r = runner.invoke(app, [*base, q])
    assert r.exit_code == 0 and "1000" in r.stdout


def test_params() -> None:
    assert parse_params(["car=1042", "x=1.5", "d=2024-06-10"]) == {"car": 1042, "x": 1.5, "d": "2024-06-10"}
    with pytest.raises(SqlError):
        parse_params(["no-equals"])
