"""One chunk of JSON Lines → flat tables, a quarantine table, statistics and drift events.

A :class:`Flattener` lives in one worker and carries the run schema from chunk to chunk (types first seen
in this run, variants, holes of the reader) and the id counters of each unit. It is given bytes and
returns Arrow tables; reading files and writing Parquet are the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from enrich.flatten.arrow.read import ChunkReader, Parsed, line_starts, node_of
from enrich.flatten.arrow.walk import FlatTable, UnitIds, path_stats, safe_name, walk
from enrich.flatten.schema import DriftEvent, Node, Policies, paths, reconcile, split_path

QUARANTINE = "_quarantine"
PARTITION_COLUMN = "__partition"
UNIT_BITS = 40  # ids: unit << 40 | line (root) or counter (children)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("_run", pa.int64()),
        ("_file", pa.string()),
        ("_line", pa.int64()),
        ("reason", pa.string()),
        ("path", pa.string()),
        ("detail", pa.string()),
        ("record", pa.string()),
        ("raw", pa.binary()),
    ]
)


@dataclass(frozen=True, slots=True)
class PartitionBy:
    """``trip.started_at:date`` — a root path and a transform (date | month | hour | identity)."""

    path: str
    transform: Literal["date", "month", "hour", "identity"] = "identity"

    @classmethod
    def parse(cls, spec: str) -> PartitionBy:
        path, _, how = spec.rpartition(":") if ":" in spec else (spec, "", "identity")
        if how not in ("date", "month", "hour", "identity"):
            raise ValueError(f"unknown partition transform {how!r} (date, month, hour, identity)")
        return cls(path, how)  # type: ignore[arg-type]

    @property
    def key(self) -> str:
        if self.transform != "identity":
            return self.transform
        return "_".join(safe_name(s.replace("[]", "")) for s in split_path(self.path))


@dataclass(frozen=True, slots=True)
class Options:
    dataset: str
    run: int
    sep: str = "."
    scalar_lists: Literal["table", "column"] = "table"
    partition_by: tuple[PartitionBy, ...] = ()
    threads: bool = True


@dataclass(slots=True)
class Chunk:
    """Lines of one unit (source file): ``data`` holds one JSON document per line, each ending in ``\\n``.

    ``lines`` gives the source line (row for Parquet) of each line of ``data`` where they differ from
    ``first_line + i`` (JSON arrays, Parquet); ``bad`` holds records the source already rejected."""

    unit: int
    file: str
    index: int
    data: bytes
    first_line: int = 1
    lines: np.ndarray | None = None
    bad: list[tuple[int, str, str, bytes]] = field(default_factory=list)
    size: int = 0
    last: bool = False
    newlines: int | None = None  # lines in ``data`` when the source counted them already


@dataclass(slots=True)
class PieceTypes:
    """The type tree and statistics of one piece, in source order (the finaliser replays them)."""

    tree: dict[str, Any]
    stats: dict[str, tuple[int, int]]


@dataclass(slots=True)
class ChunkResult:
    unit: int
    index: int
    file: str
    tables: dict[str, pa.Table]
    pieces: list[PieceTypes]
    events: list[DriftEvent]
    rows: dict[str, int]
    quarantined: int
    bad: list[dict[str, Any]]
    dropped: dict[str, int]
    records: int
    size: int
    last: bool


class Flattener:
    def __init__(self, schema: Node, policies: Policies, options: Options, *, first_run: bool) -> None:
        self.schema = schema
        self.policies = policies
        self.options = options
        self.first_run = first_run
        self.reader = ChunkReader(threads=options.threads)
        self.units: dict[int, UnitIds] = {}

    def process(self, chunk: Chunk) -> ChunkResult:
        ids = self.units.setdefault(chunk.unit, UnitIds(chunk.unit << UNIT_BITS))
        parsed = self.reader.read(chunk.data, self.schema, chunk.newlines)
        out: dict[str, list[pa.Table]] = {}
        pieces: list[PieceTypes] = []
        events: list[DriftEvent] = []
        dropped: dict[str, int] = {}
        quarantine_rows: list[tuple[int, str, str | None]] = []  # data line, reason, path
        records = 0
        for piece in parsed.pieces:
            records += piece.table.num_rows
            # record batches are the reader's blocks: walking them one by one copies nothing
            batches = [b for b in piece.table.to_batches() if b.num_rows]
            stats: dict[str, tuple[int, int]] = {}
            for batch in batches:
                for p, (a, b) in path_stats(batch).items():
                    x, y = stats.get(p, (0, 0))
                    stats[p] = (x + a, y + b)
            tree = node_of(pa.struct(list(piece.table.schema)))
            for p, node in paths(tree).items():
                node.nullable = stats.get(p, (0, 0))[1] > 0
            pieces.append(PieceTypes(tree.to_doc(), stats))
            rec = reconcile(self.schema, tree, stats, self.policies, first_run=self.first_run)
            probes: dict[str, Literal["value", "null"]] = {
                e.path: ("null" if e.change == "nullability" else "value") for e in rec.events
            }
            piece_lines = self._lines(chunk, piece.rows)
            offset = 0
            for batch in batches:
                n = batch.num_rows
                lines = piece_lines[offset : offset + n]
                rows = piece.rows[offset : offset + n]
                offset += n
                root_ids = ids.base + lines
                walked = walk(
                    batch,
                    root=self.options.dataset,
                    root_ids=root_ids,
                    ids=ids,
                    actions=rec.actions,
                    probes=probes,
                    sep=self.options.sep,
                    scalar_lists=self.options.scalar_lists,
                )
                for e in rec.events:
                    found = walked.probes.get(e.path)
                    if found is not None and e.first_seen is None:
                        e.example = _jsonable(found.example)
                        e.first_seen = {"file": chunk.file, "line": int(lines[found.root_row])}
                probes = {p: how for p, how in probes.items() if p not in walked.probes}
                for p, count in walked.dropped.items():
                    dropped[p] = dropped.get(p, 0) + count
                root = walked.tables[self.options.dataset]
                meta = {
                    "_id": pa.array(root_ids),
                    "_run": pa.array(np.full(n, self.options.run, dtype=np.int64)),
                    "_file": pa.DictionaryArray.from_arrays(
                        pa.array(np.zeros(n, dtype=np.int32)), pa.array([chunk.file])
                    ),
                    "_line": pa.array(lines),
                }
                root.columns = {**meta, **root.columns}
                keep = None
                if walked.quarantine:
                    q = np.zeros(n, dtype=bool)
                    for row, reason in walked.quarantine.items():
                        q[row] = True
                        path = reason.split(" at ", 1)[1] if " at " in reason else None
                        quarantine_rows.append((int(rows[row]), reason.split(" at ", 1)[0], path))
                    keep = ~q
                parts = self._partitions(root, n)
                for name, ft in walked.tables.items():
                    table = _assemble(ft, keep, parts)
                    if table.num_rows or name == self.options.dataset:
                        out.setdefault(name, []).append(table)
            events.extend(rec.events)
        tables = {name: _concat(ts) for name, ts in out.items()}
        qtable = self._quarantine(chunk, parsed, quarantine_rows)
        if qtable.num_rows:
            tables[QUARANTINE] = qtable
        bad: list[dict[str, Any]] = [
            {
                "file": chunk.file,
                "line": int(self._lines(chunk, np.array([b.row]))[0]),
                "reason": b.reason,
                "detail": b.detail,
            }
            for b in parsed.bad
        ]
        bad += [
            {"file": chunk.file, "line": line, "reason": reason, "detail": detail}
            for line, reason, detail, _raw in chunk.bad
        ]
        bad.sort(key=lambda b: int(b["line"]))
        return ChunkResult(
            chunk.unit,
            chunk.index,
            chunk.file,
            tables,
            pieces,
            events,
            {k: t.num_rows for k, t in tables.items()},
            len(quarantine_rows),
            bad,
            dropped,
            records,
            chunk.size,
            chunk.last,
        )

    # -- helpers ----------------------------------------------------------------------------------------
    def _lines(self, chunk: Chunk, rows: np.ndarray) -> np.ndarray:
        if chunk.lines is not None:
            return np.asarray(chunk.lines[rows], dtype=np.int64)
        return rows.astype(np.int64) + chunk.first_line

    def _partitions(self, root: FlatTable, n: int) -> pa.Array | None:
        specs = self.options.partition_by
        if not specs:
            return None
        parts: pa.Array | None = None
        for spec in specs:
            col = self.options.sep.join(safe_name(s) for s in split_path(spec.path))
            values = root.columns.get(col)
            key = _partition_values(values, spec, n)
            piece = pc.binary_join_element_wise(pa.scalar(f"{spec.key}="), key, "")
            parts = piece if parts is None else pc.binary_join_element_wise(parts, piece, "/")
        return parts

    def _quarantine(self, chunk: Chunk, parsed: Parsed, rows: list[tuple[int, str, str | None]]) -> pa.Table:
        records: list[tuple[int, str, str | None, str | None, bytes]] = []
        if rows or parsed.bad:
            starts = parsed.line_starts if parsed.line_starts is not None else line_starts(chunk.data)
            data = chunk.data

            def raw(row: int) -> bytes:
                end = int(starts[row + 1]) if row + 1 < len(starts) else len(data)
                return data[int(starts[row]) : end].rstrip(b"\r\n")

            for row, reason, path in rows:
                records.append((row, reason, path, None, raw(row)))
            for b in parsed.bad:
                records.append((b.row, b.reason, None, b.detail, raw(b.row)))
        lines = [int(self._lines(chunk, np.array([r[0]]))[0]) for r in records]
        raws = [r[4] for r in records]
        for line, reason, detail, raw_bytes in chunk.bad:
            lines.append(line)
            records.append((-1, reason, None, detail, raw_bytes))
            raws.append(raw_bytes)
        texts = [_text(r) for r in raws]
        return pa.table(
            [
                pa.array([self.options.run] * len(records), pa.int64()),
                pa.array([chunk.file] * len(records), pa.string()),
                pa.array(lines, pa.int64()),
                pa.array([r[1] for r in records], pa.string()),
                pa.array([r[2] for r in records], pa.string()),
                pa.array([r[3] for r in records], pa.string()),
                pa.array(texts, pa.string()),
                pa.array(raws, pa.binary()),
            ],
            schema=QUARANTINE_SCHEMA,
        )


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _partition_values(values: pa.Array | None, spec: PartitionBy, n: int) -> pa.Array:
    default = "__HIVE_DEFAULT_PARTITION__"
    if values is None:
        return pa.array([default] * n, pa.string())
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        ms = pc.cast(values, pa.int64())
        scaled = pc.if_else(pc.less(pc.abs(ms), 100_000_000_000), pc.multiply(ms, 1000), ms)  # s or ms
        text = pc.strftime(pc.cast(scaled, pa.timestamp("ms")), format="%Y-%m-%dT%H:%M:%S")
    else:
        text = pc.cast(values, pa.string())
    if spec.transform == "date":
        out = pc.utf8_slice_codeunits(text, 0, 10)
    elif spec.transform == "month":
        out = pc.utf8_slice_codeunits(text, 0, 7)
    elif spec.transform == "hour":
        out = pc.utf8_slice_codeunits(text, 11, 13)
    else:
        out = pc.replace_substring_regex(text, r"[/\\=:\s]", "_")
    return pc.fill_null(out, default)


def _assemble(ft: FlatTable, keep: np.ndarray | None, parts: pa.Array | None) -> pa.Table:
    table = pa.table(ft.columns)
    if parts is not None:
        table = table.append_column(
            PARTITION_COLUMN, parts if ft.root_rows is None else parts.take(ft.root_rows)
        )
    if keep is not None:
        mask = keep if ft.root_rows is None else keep[ft.root_rows]
        table = table.filter(pa.array(mask))
    return table


def _concat(tables: list[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
