"""Parquet history of raw and enriched telemetry (the only module that imports pyarrow for it).

Layout: ``<root>/<kind>/date=YYYY-MM-DD/hour=HH/<topic>-p<partition>-<first offset>-<last offset>.parquet``
(kind = raw | enriched, zstd). Raw rows are placed by their Kafka timestamp, enriched rows by event time;
a flush whose rows span several hours writes one file per hour. Files are built from Arrow columns.

Replays (bytewax output is at-least-once) never duplicate rows: the writer knows which source offsets of
each partition are already on disk (an interval set, rebuilt from the files' offset columns at start) and
writes only the rows whose offsets are new, naming the file after them, so a replayed batch overwrites
or skips instead of adding.

Two ways to write. ``write`` puts each call's rows in files of their own. ``append`` + ``commit`` build
one file per partition and hour out of many calls: every ``append`` is compressed and written as a row
group of an open segment (a hidden ``.tmp`` file) by the background thread as it comes, and ``commit``
writes the footers and renames the segments into place — so the end of an epoch waits for the last
appended rows only, not for the epoch's whole history. A segment is invisible to readers (and to the
offset index rebuilt at start) until it is committed; one left by a crash is removed at start.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from bisect import bisect_right
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enrich.records import EnrichedColumns, Record

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
SCHEMAS = {"raw": RAW_SCHEMA, "enriched": ENRICHED_SCHEMA, "outliers": RAW_SCHEMA}  # outliers: archived topic
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
        if xs:
            lo, hi = min(xs), max(xs)
            if hi - lo + 1 == len(xs):  # offsets of a partition are unique: one run, no sort needed
                self.add(lo, hi)
                return
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


HistoryKind = Literal["raw", "enriched"]
_HOUR_MS = 3_600_000


@dataclass
class _Segment:
    """An open file of one partition and hour: row groups go in as they are appended (by the background
    thread, in hand-over order); ``lo``/``hi`` are its offsets so far (the file is named after them)."""

    folder: Path
    topic: str
    partition: int
    tmp: Path
    schema: pa.Schema
    lo: int
    hi: int
    writer: pq.ParquetWriter | None = None

    def append(self, part: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.writer.write_table(part)

    @property
    def target(self) -> Path:
        return self.folder / _file_name(self.topic, self.partition, self.lo, self.hi)

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.target)


def _file_name(topic: str, partition: int, lo: int, hi: int) -> str:
    """A history file's name: its partition and offset range (``_NAME`` parses it back)."""
    return f"{topic}-p{partition}-{lo:012d}-{hi:012d}.parquet"


class HistoryWriter:
    """With ``background``, files are compressed and written by one thread of their own (pyarrow releases
    the GIL while it compresses and writes), overlapping the flow's work; ``wait()`` returns once every
    file handed over so far is on disk (the flow calls it before an epoch may close) and raises the first
    write error."""

    def __init__(self, root: Path, *, background: bool = False) -> None:
        self.root = root
        self._written: dict[tuple[str, str, int], Intervals] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="history") if background else None
        self._pending: list[Future[None]] = []
        self._open: dict[tuple[str, str, int, int], _Segment] = {}  # (kind, topic, partition, hour)

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def close(self) -> None:
        self.commit()
        if self._pool is not None:
            self._pool.shutdown()

    def _run(self, fn: Callable[[], object]) -> None:
        if self._pool is None:
            fn()
        else:
            self._pending.append(self._pool.submit(fn))  # type: ignore[arg-type]

    @staticmethod
    def _store(part: pa.Table, target: Path) -> None:
        tmp = target.with_suffix(".tmp")
        pq.write_table(part, tmp, compression="zstd")
        os.replace(tmp, target)

    def commit(self) -> list[Path]:
        """Close every open segment into its final file and wait until everything handed over is on disk
        (raises the first write error). Returns the files committed."""
        segments, self._open = list(self._open.values()), {}
        for seg in segments:
            self._run(seg.commit)
        self.wait()
        return [seg.target for seg in segments]

    def _index(self, kind: str, topic: str, partition: int) -> Intervals:
        key = (kind, topic, partition)
        found = self._written.get(key)
        if found is None:
            found = self._written[key] = Intervals()
            # segments a crashed writer of this partition left: never committed, none of their rows counts
            for tmp in (self.root / kind).glob(f"date=*/hour=*/.{topic}-p{partition}-*.tmp"):
                tmp.unlink(missing_ok=True)
            for path in (self.root / kind).glob(f"date=*/hour=*/{topic}-p{partition}-*.parquet"):
                m = _NAME.match(path.name)
                if m and m["topic"] == topic and int(m["partition"]) == partition:
                    offsets = pq.read_table(path, columns=["offset"]).column("offset").to_pylist()
                    found.add_all(offsets)
        return found

    def next_offset(self, kind: str, topic: str, partition: int) -> int | None:
        """The offset after the newest one of this partition on disk (``None``: nothing on disk)."""
        index = self._index(kind, topic, partition)
        return index.ends[-1] + 1 if index.ends else None

    def _write(
        self,
        kind: str,
        topic: str,
        partition: int,
        table: pa.Table,
        times: pa.Array,
        *,
        segment: bool = False,
    ) -> list[Path]:
        """Write the rows of ``table`` whose offsets are not on disk yet, one file per hour of ``times``
        (with ``segment``, appended to the open segment of the partition and hour instead)."""
        index = self._index(kind, topic, partition)
        offsets = table.column("offset")
        if index.ends and pc.min(offsets).as_py() <= index.ends[-1]:  # a replay: keep only new offsets
            keep = pa.array([o not in index for o in offsets.to_pylist()], pa.bool_())
            table, times = table.filter(keep), times.filter(keep)
            if table.num_rows == 0:
                return []
        hours = pc.divide(pc.max_element_wise(times, 0), _HOUR_MS)
        written = []
        for hour in pc.unique(hours).to_pylist():
            part = (
                table
                if len(hours) and pc.all(pc.equal(hours, hour)).as_py()
                else table.filter(pc.equal(hours, hour))
            )
            offs = part.column("offset")
            lo, hi = pc.min(offs).as_py(), pc.max(offs).as_py()
            t = dt.datetime.fromtimestamp(hour * 3600, tz=dt.UTC)
            folder = self.root / kind / f"date={t:%Y-%m-%d}" / f"hour={t:%H}"
            folder.mkdir(parents=True, exist_ok=True)
            if segment:
                key = (kind, topic, partition, int(hour))
                seg = self._open.get(key)
                if seg is None:
                    tmp = folder / f".{topic}-p{partition}-{uuid.uuid4().hex}.tmp"
                    seg = self._open[key] = _Segment(folder, topic, partition, tmp, table.schema, lo, hi)
                seg.lo, seg.hi = min(seg.lo, lo), max(seg.hi, hi)
                self._run(lambda seg=seg, part=part: seg.append(part))  # type: ignore[misc]
            else:
                target = folder / _file_name(topic, partition, lo, hi)
                self._run(lambda part=part, target=target: self._store(part, target))  # type: ignore[misc]
                written.append(target)
            # Known as written from the hand-over on: a failed write fails wait(), the worker restarts and
            # rebuilds this index from the files on disk.
            index.add_all(offs.to_pylist())
        return written

    def write(
        self,
        topic: str,
        partition: int,
        raw: Sequence[Record],
        enriched: EnrichedColumns | None,
        *,
        raw_kind: str = "raw",
    ) -> list[Path]:
        """Write the rows of one partition not on disk yet (each file in the date/hour partition of its
        rows: raw by Kafka timestamp, enriched by event time); returns the files written. ``raw_kind`` puts
        the raw records under another folder (``outliers``: the archived outlier topic)."""
        return self._put(topic, partition, raw, enriched, raw_kind=raw_kind, segment=False)

    def append(
        self,
        topic: str,
        partition: int,
        raw: Sequence[Record],
        enriched: EnrichedColumns | None,
        *,
        raw_kind: str = "raw",
    ) -> None:
        """Add the rows of one partition not on disk yet to its open segments (one per kind and hour); they
        are on disk, in their final files, once ``commit`` returns."""
        self._put(topic, partition, raw, enriched, raw_kind=raw_kind, segment=True)

    def _put(
        self,
        topic: str,
        partition: int,
        raw: Sequence[Record],
        enriched: EnrichedColumns | None,
        *,
        raw_kind: str,
        segment: bool,
    ) -> list[Path]:
        written: list[Path] = []
        if raw:
            _t, _p, offsets, keys, values, stamps = zip(*raw, strict=True)
            n = len(offsets)
            kafka_ts = pa.array(stamps, pa.int64()).fill_null(0)
            table = pa.Table.from_arrays(
                [
                    pa.array([topic] * n, pa.string()),
                    pa.array([partition] * n, pa.int32()),
                    pa.array(offsets, pa.int64()),
                    kafka_ts,
                    pa.array(keys, pa.binary()),
                    pa.array(values, pa.binary()),
                ],
                schema=RAW_SCHEMA,
            )
            written += self._write(raw_kind, topic, partition, table, kafka_ts, segment=segment)
        if enriched is not None and enriched.rows:
            times = pa.array(enriched.ts, pa.int64())
            table = pa.Table.from_arrays(
                [
                    pa.array(enriched.offsets, pa.int64()),
                    pa.array(enriched.event_ids, pa.string()),
                    pa.array(enriched.car_ids, pa.int64()),
                    times,
                    pa.array(enriched.statuses, pa.string()),
                    pa.array(enriched.bodies, pa.binary()).view(pa.string()),  # orjson output: valid UTF-8
                ],
                schema=ENRICHED_SCHEMA,
            )
            written += self._write("enriched", topic, partition, table, times, segment=segment)
        return written


def read_history(root: Path, kind: HistoryKind) -> pa.Table:
    """Every row of one kind (raw | enriched) under ``root``."""
    files = sorted((root / kind).glob("date=*/hour=*/*.parquet"))
    if not files:
        return SCHEMAS[kind].empty_table()
    return pa.concat_tables([pq.read_table(f, schema=SCHEMAS[kind]) for f in files])
