"""Parquet history of raw and enriched telemetry (the only module that imports pyarrow for it).

Layout: ``<root>/<kind>/date=YYYY-MM-DD/hour=HH/<topic>-p<partition>-<first offset>-<last offset>.parquet``
(kind = raw | enriched, zstd, hour of the batch's first event). One file per partition per written batch.

Replays (bytewax output is at-least-once) never duplicate rows: the writer knows which source offsets of
each partition are already on disk (an interval set, rebuilt from the files' offset columns at start) and
writes only the rows whose offsets are new, naming the file after them, so a replayed batch overwrites
or skips instead of adding.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

RAW_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("kafka_ts", pa.int64()),
        ("key", pa.binary()),
        ("value", pa.binary()),
    ]
)
ENRICHED_SCHEMA = pa.schema(
    [
        ("offset", pa.int64()),
        ("event_id", pa.string()),
        ("car_id", pa.int64()),
        ("ts", pa.int64()),
        ("status", pa.string()),
        ("json", pa.string()),
    ]
)
SCHEMAS = {"raw": RAW_SCHEMA, "enriched": ENRICHED_SCHEMA}
RawRow = tuple[int, int, bytes | None, bytes | None]  # offset, kafka timestamp, key, value
EnrichedRow = tuple[int, str, int | None, int, str, str]  # offset, event_id, car_id, ts, status, json
_NAME = re.compile(r"^(?P<topic>.+)-p(?P<partition>\d+)-(?P<first>\d{12})-(?P<last>\d{12})\.parquet$")


class Intervals:
    """A set of integers kept as sorted, merged closed intervals."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __contains__(self, x: int) -> bool:
        i = bisect_right(self.starts, x) - 1
        return i >= 0 and x <= self.ends[i]

    def add(self, lo: int, hi: int) -> None:
        i = bisect_right(self.starts, lo) - 1
        if i >= 0 and self.ends[i] >= lo - 1:
            lo = self.starts[i]
            hi = max(hi, self.ends[i])
            del self.starts[i], self.ends[i]
        else:
            i += 1
        while i < len(self.starts) and self.starts[i] <= hi + 1:
            hi = max(hi, self.ends[i])
            del self.starts[i], self.ends[i]
        self.starts.insert(i, lo)
        self.ends.insert(i, hi)

    def add_all(self, xs: Sequence[int]) -> None:
        run_start = prev = None
        for x in sorted(xs):
            if prev is not None and x == prev + 1:
                prev = x
                continue
            if run_start is not None and prev is not None:
                self.add(run_start, prev)
            run_start = prev = x
        if run_start is not None and prev is not None:
            self.add(run_start, prev)


class HistoryWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._written: dict[tuple[str, str, int], Intervals] = {}

    def _index(self, kind: str, topic: str, partition: int) -> Intervals:
        key = (kind, topic, partition)
        found = self._written.get(key)
        if found is None:
            found = self._written[key] = Intervals()
            for path in (self.root / kind).glob(f"date=*/hour=*/{topic}-p{partition}-*.parquet"):
                m = _NAME.match(path.name)
                if m and m["topic"] == topic and int(m["partition"]) == partition:
                    offsets = pq.read_table(path, columns=["offset"]).column("offset").to_pylist()
                    found.add_all(offsets)
        return found

    def _write(
        self, kind: str, topic: str, partition: int, rows: list[tuple[object, ...]], hour_ms: int
    ) -> Path | None:
        index = self._index(kind, topic, partition)
        if index.ends and min(rows)[0] <= index.ends[-1]:  # type: ignore[operator]
            new = [r for r in rows if r[0] not in index]  # type: ignore[operator]
        else:
            new = rows  # the usual case: everything is past what is on disk
        if not new:
            return None
        offsets = [int(r[0]) for r in new]  # type: ignore[call-overload]
        t = dt.datetime.fromtimestamp(hour_ms / 1000, tz=dt.UTC)
        folder = self.root / kind / f"date={t:%Y-%m-%d}" / f"hour={t:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{topic}-p{partition}-{min(offsets):012d}-{max(offsets):012d}.parquet"
        schema = SCHEMAS[kind]
        if kind == "raw":
            columns = [[topic] * len(new), [partition] * len(new), *zip(*new, strict=True)]
        else:
            columns = list(zip(*new, strict=True))
        table = pa.Table.from_arrays(
            [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
        )
        tmp = target.with_suffix(".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
        index.add_all(offsets)
        return target

    def write(self, topic: str, partition: int, raw: list[RawRow], enriched: list[EnrichedRow]) -> list[Path]:
        """Write the rows of one partition not on disk yet; returns the files written."""
        written = []
        if raw:
            path = self._write("raw", topic, partition, raw, raw[0][1] or 0)  # type: ignore[arg-type]
            if path:
                written.append(path)
        if enriched:
            path = self._write("enriched", topic, partition, enriched, enriched[0][3])  # type: ignore[arg-type]
            if path:
                written.append(path)
        return written


def read_history(root: Path, kind: str) -> pa.Table:
    """Every row of one kind (raw | enriched) under ``root``."""
    files = sorted((root / kind).glob("date=*/hour=*/*.parquet"))
    if not files:
        return SCHEMAS[kind].empty_table()
    return pa.concat_tables([pq.read_table(f, schema=SCHEMAS[kind]) for f in files])
