"""Drift across two batches of trip reports: the second adds a level-4 field, sends a level-3 number as a
string and drops a level-5 field (simulator/trips.py). Exactly those three findings, every row kept."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from enrich.flatten.registry import SchemaVersion
from simulator.trips import trip_reports
from stores.schema_registry import FileSchemaRegistry
from tests.flatten.helpers import read_tables, run_job

N1, N2 = 300, 200


@pytest.fixture
def batches(tmp_path: Path) -> tuple[Path, Path]:
    b1, b2 = tmp_path / "batch-1.jsonl", tmp_path / "batch-2.jsonl"
    b1.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in trip_reports(N1)))
    b2.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in trip_reports(N2, seed=11, drift=True, first=N1)))
    return b1, b2


EXPECTED = {
    ("trip.route.distance_km", "incompatible", "double", "string"),
    ("trip.route.segments[].surface", "added", None, "string"),
    ("trip.route.segments[].road.lanes", "removed", "int64", None),
}


def test_second_batch_yields_exactly_the_three_findings_and_keeps_every_row(
    batches: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = run_job([batches[0]], out, dataset="trips", batch_bytes=64 << 10)
    assert first["drift"] == [] and (first["schema_version_before"], first["schema_version_after"]) == (
        None,
        1,
    )
    second = run_job([batches[1]], out, dataset="trips", batch_bytes=64 << 10)
    assert {(f["path"], f["change"], f["old_type"], f["new_type"]) for f in second["drift"]} == EXPECTED
    assert len(second["drift"]) == 3
    assert (second["schema_version_before"], second["schema_version_after"]) == (1, 2)
    by = {f["change"]: f for f in second["drift"]}
    assert by["incompatible"]["policy"] == "variant"
    assert by["incompatible"]["first_seen"] == {"file": str(batches[1]), "line": 1}
    original = [orjson.loads(line) for line in batches[1].read_bytes().splitlines()]
    assert by["incompatible"]["example"] == original[0]["trip"]["route"]["distance_km"]
    assert by["added"]["example"] == original[0]["trip"]["route"]["segments"][0]["surface"]

    tables = read_tables(out)
    root = tables["trips"]
    assert len(root) == N1 + N2 and second["quarantined"] == 0
    by_report = {r["report_id"]: r for r in root}
    for doc in original:  # the changed values are in the variant column, the column keeps its type
        row = by_report[doc["report_id"]]
        assert row["trip.route.distance_km__v_string"] == doc["trip"]["route"]["distance_km"]
        assert row["trip.route.distance_km"] is None
    for doc in trip_reports(N1):
        row = by_report[doc["report_id"]]
        assert row["trip.route.distance_km"] == doc["trip"]["route"]["distance_km"]
        assert row.get("trip.route.distance_km__v_string") is None
    surfaces = [s["surface"] for d in original for s in d["trip"]["route"]["segments"]]
    assert sorted(r["surface"] for r in tables["trips__trip__route__segments"] if r.get("surface")) == sorted(
        surfaces
    )

    registry = FileSchemaRegistry(out / "_registry")
    assert registry.versions("trips") == [1, 2]
    v2: SchemaVersion = registry.get("trips", 2)
    route = v2.schema["fields"]["trip"]["fields"]["route"]["fields"]
    assert route["distance_km"]["type"] == "double" and route["distance_km"]["variants"] == ["string"]
    segment = route["segments"]["item"]["fields"]
    assert "surface" in segment and "lanes" not in segment["road"]["fields"]

    third = run_job([batches[1]], out, dataset="trips")  # the same shape again: nothing new
    assert third["drift"] == [] and third["schema_version_after"] == 2


def test_quarantine_policy_puts_the_changed_rows_aside_with_path_reason_file_and_line(
    batches: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_job([batches[0]], out, dataset="trips")
    second = run_job([batches[1]], out, dataset="trips", policy_overrides={"incompatible": "quarantine"})
    assert {(f["path"], f["change"]) for f in second["drift"]} == {(p, c) for p, c, _o, _n in EXPECTED}
    assert second["quarantined"] == N2
    tables = read_tables(out, drop=())
    assert len(tables["trips"]) == N1  # the changed rows are not in the tables ...
    q = tables["_quarantine"]
    assert len(q) == N2  # ... but every one of them is here, whole
    lines = batches[1].read_bytes().splitlines()
    for row in q:
        assert row["path"] == "trip.route.distance_km" and row["reason"] == "incompatible"
        assert row["_file"] == str(batches[1])
        assert row["record"].encode() == lines[row["_line"] - 1] == row["raw"]
    kept = {r["_id"] for r in tables["trips"]}
    for name, rows in tables.items():  # no child row of a quarantined record stayed behind
        if name.startswith("trips__"):
            assert {r["_root_id"] for r in rows} <= kept


def test_mixed_types_inside_one_batch_are_drift_not_a_crash(tmp_path: Path) -> None:
    src = tmp_path / "mixed.jsonl"
    src.write_text(
        '{"a": {"v": 1}}\n{"a": {"v": 2}}\n{"a": {"v": "three"}}\n{"a": {"v": 4}}\n{"a": {"v": [5]}}\n'
    )
    report = run_job([src], tmp_path / "out", dataset="mixed")
    assert {(f["path"], f["change"], f["old_type"], f["new_type"]) for f in report["drift"]} == {
        ("a.v", "incompatible", "int64", "string"),
        ("a.v", "shape", "int64", "list<int64>"),
    }
    rows = read_tables(tmp_path / "out")["mixed"]
    assert [r["a.v"] for r in rows] == [1, 2, None, 4, None]
    assert [r.get("a.v__v_string") for r in rows] == [None, None, "three", None, None]
    assert [r.get("a.v__v_list_int64") for r in rows] == [None, None, None, None, [5]]


def test_freeze_rejects_the_change_and_discard_value_keeps_the_row(
    batches: tuple[Path, Path], tmp_path: Path
) -> None:
    frozen, discarded = tmp_path / "frozen", tmp_path / "discarded"
    for out in (frozen, discarded):
        run_job([batches[0]], out, dataset="trips")
    r = run_job(
        [batches[1]], frozen, dataset="trips", policy_overrides={"added": "freeze", "incompatible": "freeze"}
    )
    assert {(f["change"], f["policy"]) for f in r["drift"]} >= {
        ("added", "freeze"),
        ("incompatible", "freeze"),
    }
    assert r["quarantined"] == N2  # every record of batch 2 carries a rejected change
    q = read_tables(frozen)["_quarantine"]
    # a record is quarantined for the first rejected change the walk meets in it
    assert {(row["reason"], row["path"]) for row in q} <= {
        ("frozen: incompatible", "trip.route.distance_km"),
        ("frozen: added", "trip.route.segments[].surface"),
    }
    v2 = FileSchemaRegistry(frozen / "_registry").get("trips", 2).schema
    segment = v2["fields"]["trip"]["fields"]["route"]["fields"]["segments"]["item"]["fields"]
    assert "surface" not in segment  # the frozen schema did not take the new field

    r = run_job([batches[1]], discarded, dataset="trips", policy_overrides={"incompatible": "discard_value"})
    assert r["quarantined"] == 0 and r["dropped_values"] == {"trip.route.distance_km": N2}
    rows = [row for row in read_tables(discarded)["trips"] if row["_run"] == 2]
    assert len(rows) == N2 and all(row["trip.route.distance_km"] is None for row in rows)
    assert not any("trip.route.distance_km__v_string" in row for row in rows)
