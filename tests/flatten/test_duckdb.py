"""DuckDB reads the published tables as they are; parent/child joins give back the original records."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson

from simulator.trips import trip_reports
from tests.flatten.helpers import run_job

N = 400


def test_duckdb_joins_give_back_record_count_and_values(tmp_path: Path) -> None:
    src = tmp_path / "trips.jsonl"
    docs = list(trip_reports(N, seed=3))
    src.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    out = tmp_path / "out"
    run_job([src], out, dataset="trips", batch_bytes=128 << 10, partition_by=["trip.started_at:date"])
    db = duckdb.connect()

    def table(name: str) -> str:
        return f"read_parquet('{out}/{name}/**/*.parquet', hive_partitioning = true, union_by_name = true)"

    assert db.execute(f"select count(*) from {table('trips')}").fetchone() == (N,)
    # every sample joins back to its segment and its record: the original count of samples
    samples = sum(len(s["samples"]) for d in docs for s in d["trip"]["route"]["segments"])
    joined = db.execute(f"""
        select count(*) from {table("trips__trip__route__segments__samples")} s
        join {table("trips__trip__route__segments")} g on s._parent_id = g._id
        join {table("trips")} t on g._parent_id = t._id and s._root_id = t._id""").fetchone()
    assert joined == (samples,)
    # a sample of records rebuilt from the tables equals the original values
    for doc in docs[:: N // 8]:
        rid = doc["report_id"]
        row = db.execute(
            f"""select "car.car_id", "trip.route.distance_km", "trip.driver.customer_id", "date"
                             from {table("trips")} where report_id = ?""",
            [rid],
        ).fetchone()
        driver = doc["trip"]["driver"]
        assert row is not None and str(row[3]) == doc["trip"]["started_at"][:10]  # the Hive partition
        assert row[:3] == (
            doc["car"]["car_id"],
            doc["trip"]["route"]["distance_km"],
            driver["customer_id"] if driver else None,
        )
        speeds = db.execute(
            f"""
            select g._idx, s._idx, s.speed_kmh, s."signals.soc"
            from {table("trips")} t
            join {table("trips__trip__route__segments")} g on g._parent_id = t._id
            join {table("trips__trip__route__segments__samples")} s on s._parent_id = g._id
            where t.report_id = ? order by 1, 2""",
            [rid],
        ).fetchall()
        expected = [
            (i, j, s["speed_kmh"], s["signals"]["soc"])
            for i, seg in enumerate(doc["trip"]["route"]["segments"])
            for j, s in enumerate(seg["samples"])
        ]
        assert speeds == expected
        cells = db.execute(
            f"""select list(value order by _idx) from {table("trips__battery__cells_v")}
                               where _parent_id = (select _id from {table("trips")} where report_id = ?)""",
            [rid],
        ).fetchone()
        assert cells is not None and (cells[0] or []) == doc["battery"]["cells_v"]
    dates = {d["trip"]["started_at"][:10] for d in docs}
    assert {p.name for p in (out / "trips").iterdir()} == {f"date={d}" for d in dates}
