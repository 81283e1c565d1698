"""HistoryWriter.append + commit: many appends make one file per partition and hour, invisible until the
commit; replays add nothing; a segment a crash left behind never counts."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from enrich.records import EnrichedColumns, Record
from stores.parquet_history import HistoryWriter, read_history

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR  # the start of an hour


def raw(offsets: range, hour: int = 0) -> list[Record]:
    return [Record("telemetry", 0, o, b"k", b"v%d" % o, T0 + hour * HOUR + o) for o in offsets]


def enriched(offsets: range, hour: int = 0) -> EnrichedColumns:
    return EnrichedColumns(
        list(offsets),
        [f"d:{o}" for o in offsets],
        [7] * len(offsets),
        [T0 + hour * HOUR + o for o in offsets],
        ["joined"] * len(offsets),
        [b'{"o":%d}' % o for o in offsets],
    )


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob("*/date=*/hour=*/*.parquet"))


@pytest.mark.parametrize("background", [False, True])
def test_appends_become_one_file_per_partition_and_hour_at_commit(tmp_path: Path, background: bool) -> None:
    w = HistoryWriter(tmp_path, background=background)
    w.append("telemetry", 0, raw(range(0, 100)), enriched(range(0, 100)))
    w.append("telemetry", 0, raw(range(100, 150)), enriched(range(100, 150)))
    w.append("telemetry", 0, raw(range(150, 200), hour=1), enriched(range(150, 200), hour=1))
    w.wait()
    assert files(tmp_path) == []  # nothing visible before the commit
    assert read_history(tmp_path, "raw").num_rows == 0
    committed = w.commit()
    assert sorted(str(p.relative_to(tmp_path)) for p in committed) == files(tmp_path)
    names = [f.rsplit("/", 1)[1] for f in files(tmp_path)]
    assert sorted(names) == sorted(["telemetry-p0-000000000000-000000000149.parquet"] * 2
                                   + ["telemetry-p0-000000000150-000000000199.parquet"] * 2)  # fmt: skip
    assert sorted(read_history(tmp_path, "raw").column("offset").to_pylist()) == list(range(200))
    table = read_history(tmp_path, "enriched")
    assert sorted(table.column("offset").to_pylist()) == list(range(200))
    first = next(p for p in tmp_path.glob("raw/date=*/hour=*/*-000000000149.parquet"))
    assert pq.ParquetFile(first).metadata.num_row_groups == 2  # one row group per append
    assert not list(tmp_path.rglob("*.tmp"))
    w.close()


def test_a_replay_after_a_commit_adds_nothing(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path, background=True)
    w.append("telemetry", 0, raw(range(0, 50)), None)
    w.commit()
    again = HistoryWriter(tmp_path, background=True)  # a restart: the index comes from the files
    again.append("telemetry", 0, raw(range(30, 80)), None)
    again.commit()
    assert sorted(read_history(tmp_path, "raw").column("offset").to_pylist()) == list(range(80))
    again.close()


def test_a_segment_left_by_a_crash_is_dropped_and_its_rows_written_again(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path)
    w.append("telemetry", 0, raw(range(0, 50)), None)
    w.commit()
    w.append("telemetry", 0, raw(range(50, 90)), None)  # the epoch in progress when the worker dies
    assert list(tmp_path.rglob(".telemetry-p0-*.tmp"))
    restarted = HistoryWriter(tmp_path)
    assert restarted.next_offset("raw", "telemetry", 0) == 50  # the uncommitted rows do not count
    assert not list(tmp_path.rglob(".telemetry-p0-*.tmp"))
    restarted.append("telemetry", 0, raw(range(50, 90)), None)  # replayed from the last epoch
    restarted.commit()
    assert sorted(read_history(tmp_path, "raw").column("offset").to_pylist()) == list(range(90))
