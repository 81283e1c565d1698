"""JSON Lines bytes → Arrow tables with pyarrow's C++ JSON reader, never stopping on bad or drifting input.

The reader is given the run schema as an explicit schema (so types stay stable between chunks and
timestamps-looking strings stay strings), except at "holes": paths whose values drifted and are read
with inference instead. A chunk that does not parse as a whole is cut into pieces:

* a type conflict at a path of the explicit schema punches a hole there and the chunk is read again;
* a conflict inside the chunk's own rows (mixed types on one path) ends the piece at that row: the rows
  before it form one piece, the rest is read again as the next one — each piece is internally
  consistent and :func:`enrich.flatten.schema.reconcile` decides where its values go;
* a row that is not valid JSON (or not an object, or invalid UTF-8) is cut out as a bad record with its
  line; a row whose own values are mixed (``[1, "a"]``) is cut out as a bad record too.

Row numbers in pyarrow's errors are relative to its block, so the exact row is found by reading again
as one block (only on the error path).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pj

from enrich.flatten.schema import Node

_CONFLICT = re.compile(r"Column\((?P<col>.*)\) changed from (?P<old>\w+) to (?P<new>\w+) in row (?P<row>\d+)")
_ROW = re.compile(r"in row (?P<row>\d+)")
_TIMESTAMP_HINT = "timestamp"
MAX_SPLITS = 64  # per window; past it the rest of the window is read line by line
WINDOW = 1 << 20  # after a failure, the rest of a chunk is read in windows of this many bytes


@dataclass(slots=True)
class Piece:
    """Rows of a chunk that parsed together. ``rows`` are indexes of the chunk's lines (not blank)."""

    table: pa.Table
    rows: np.ndarray


@dataclass(slots=True)
class BadLine:
    row: int  # index of the line in the chunk
    reason: str
    detail: str


@dataclass(slots=True)
class Parsed:
    pieces: list[Piece] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    line_starts: np.ndarray | None = None  # byte offset of every line (computed on the error paths only)


# ------------------------------------------------------------------------------------------- types


def node_of(t: pa.DataType) -> Node:
    """The schema node of an Arrow type (nullability is set from statistics by the caller)."""
    if pa.types.is_struct(t):
        return Node("struct", fields={t.field(i).name: node_of(t.field(i).type) for i in range(t.num_fields)})
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return Node("list", item=node_of(t.value_type))
    if pa.types.is_integer(t):
        return Node("int64")
    if pa.types.is_floating(t):
        return Node("double")
    if pa.types.is_boolean(t):
        return Node("bool")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return Node("string")
    if pa.types.is_null(t):
        return Node("null")
    return Node(str(t))


_SCALARS = {"int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_(), "string": pa.string()}


def arrow_type(node: Node, path: str, holes: set[str]) -> pa.DataType | None:
    """The explicit reading type of a schema node (None: let the reader infer it)."""
    from enrich.flatten.schema import child_path, item_path

    if path in holes:
        return None
    if node.type == "struct":
        assert node.fields is not None
        fields = []
        for name, sub in node.fields.items():
            t = arrow_type(sub, child_path(path, name), holes)
            if t is not None:
                fields.append(pa.field(name, t))
        return pa.struct(fields)
    if node.type == "list":
        if node.item is None:
            return None
        item = arrow_type(node.item, item_path(path), holes)
        return pa.list_(item) if item is not None else None
    return _SCALARS.get(node.type)


def explicit_schema(root: Node, holes: set[str]) -> pa.Schema:
    t = arrow_type(root, "", holes)
    assert isinstance(t, pa.StructType)
    return pa.schema([t.field(i) for i in range(t.num_fields)])


def _no_timestamps(t: pa.DataType) -> pa.DataType:
    if pa.types.is_struct(t):
        return pa.struct(
            [pa.field(t.field(i).name, _no_timestamps(t.field(i).type)) for i in range(t.num_fields)]
        )
    if pa.types.is_list(t):
        return pa.list_(_no_timestamps(t.value_type))
    if pa.types.is_temporal(t):
        return pa.string()
    return t


def error_path(col: str, schema: pa.Schema) -> str | None:
    """Map a reader error column (``/trip/route/segments/[]/road``) to a schema path, matching field names
    that themselves contain ``/`` against the explicit schema. None if it is not in the explicit schema."""
    from enrich.flatten.schema import child_path, item_path

    parts = col.strip("/").split("/") if col.strip("/") else []
    t: pa.DataType = pa.struct(list(schema))
    path = ""
    i = 0
    while i < len(parts):
        if parts[i] == "[]":
            if not pa.types.is_list(t):
                return None
            t, path, i = t.value_type, item_path(path), i + 1
            continue
        if not pa.types.is_struct(t):
            return None
        for j in range(len(parts), i, -1):
            name = "/".join(parts[i:j])
            idx = t.get_field_index(name)
            if idx >= 0:
                t, path, i = t.field(idx).type, child_path(path, name), j
                break
        else:
            return None
    return path


# ------------------------------------------------------------------------------------------ reading


def _read(data: bytes | bytearray, schema: pa.Schema | None, *, one_block: bool, threads: bool) -> pa.Table:
    block = max(len(data) + 1, 1 << 20) if one_block else 8 << 20
    ropts = pj.ReadOptions(use_threads=threads and not one_block, block_size=block)
    popts = (
        pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
        if schema is not None and len(schema)
        else pj.ParseOptions()
    )
    return pj.read_json(pa.BufferReader(pa.py_buffer(data)), read_options=ropts, parse_options=popts)


def _fix_timestamps(table: pa.Table, data: bytes | bytearray) -> pa.Table:
    """Strings that the reader took for timestamps are read again as strings (they stay as written)."""
    if not any(_TIMESTAMP_HINT in str(f.type) or "date" in str(f.type) for f in table.schema):
        return table
    fixed = pa.schema([pa.field(f.name, _no_timestamps(f.type)) for f in table.schema])
    return _read(data, fixed, one_block=False, threads=True)


def line_starts(data: bytes | bytearray) -> np.ndarray:
    """Byte offset where each line of ``data`` starts (``data`` ends with a newline)."""
    nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    return np.concatenate(([0], nl[:-1] + 1)).astype(np.int64)


class ChunkReader:
    """Reads chunks with the run schema; remembers holes (drifting paths) for the following chunks."""

    def __init__(self, threads: bool = True) -> None:
        self.holes: set[str] = set()
        self.threads = threads

    def read(self, data: bytes, schema: Node, newlines: int | None = None) -> Parsed:
        """``data``: lines ending in ``\\n``. Blank lines are skipped (they are not records)."""
        out = Parsed()
        span = _Span(self, data, schema, out, newlines)
        bad_utf8 = _utf8_errors(data)
        if bad_utf8:
            rows = sorted(set(_line_of_offsets(_starts(data, out), bad_utf8)))
            out.bad.extend(BadLine(r, "invalid_utf8", "not valid UTF-8") for r in rows)
            span.blank(rows)
        span.run(0, len(data))
        return out

    def _read_holey(self, span: bytes | bytearray, schema: Node) -> pa.Table:
        """Read with the explicit schema; conflicts at explicit paths become holes (sticky)."""
        from enrich.flatten.schema import paths

        for _ in range(64):
            explicit = explicit_schema(schema, self.holes)
            try:
                return _fix_timestamps(_read(span, explicit, one_block=False, threads=self.threads), span)
            except pa.ArrowInvalid as exc:
                msg = str(exc)
                m = _CONFLICT.search(msg)
                path = error_path(m["col"], explicit) if m else None
                if path and path not in self.holes:
                    self.holes.add(path)
                    continue
                if "Failed to convert JSON to int64" in msg:  # a double where int64 was explicit: infer
                    ints = {p for p, n in paths(schema).items() if n.type == "int64"} - self.holes
                    if ints:
                        self.holes |= ints
                        continue
                raise
        raise pa.ArrowInvalid("too many drifting paths in one chunk")


class _Span:
    """The recursion over byte spans of whole lines of one chunk.

    Bad lines are blanked out (replaced by spaces in a copy, so offsets and line numbers stay) rather than
    cut out, and lines whose values have another JSON kind at a conflicting path are read as a group of
    their own: either way a chunk stays a few large reads. Only what these cannot place is found by
    re-reading around the failing row (``split``), in windows once something failed.
    """

    def __init__(self, reader: ChunkReader, data: bytes | bytearray, schema: Node, out: Parsed,
                 newlines: int | None) -> None:  # fmt: skip
        self.reader = reader
        self.data = data
        self.schema = schema
        self.out = out
        self.newlines = newlines
        self.splits = 0
        self.failed = False
        self.validated = False
        self.grouped: set[str] = set()

    def lines(self, lo: int, hi: int) -> range:
        starts = _starts(self.data, self.out)
        return range(int(np.searchsorted(starts, lo)), int(np.searchsorted(starts, hi)))

    def end_of(self, row: int) -> int:
        starts = _starts(self.data, self.out)
        return int(starts[row + 1]) if row + 1 < len(starts) else len(self.data)

    def line(self, row: int) -> bytes:
        return bytes(self.data[int(_starts(self.data, self.out)[row]) : self.end_of(row)])

    def nonblank(self, lo: int, hi: int) -> list[int]:
        return [r for r in self.lines(lo, hi) if not self.line(r).isspace()]

    def blank(self, rows: list[int]) -> None:
        """Replace these lines by spaces (the reader skips blank lines; offsets stay)."""
        if not rows:
            return
        if not isinstance(self.data, bytearray):
            self.data = bytearray(self.data)
        starts = _starts(self.data, self.out)
        for r in rows:
            lo, hi = int(starts[r]), self.end_of(r) - 1  # keep the newline
            self.data[lo:hi] = b" " * (hi - lo)
        self.newlines = None

    def run(self, lo: int, hi: int, *, window: bool = False) -> None:
        while lo < hi:
            if self.failed and not window and hi - lo > WINDOW:  # after a failure: windows, small re-reads
                cut = self.data.find(b"\n", lo + WINDOW, hi)
                end = hi if cut < 0 else cut + 1
                outer, self.splits = self.splits, 0
                self.run(lo, end, window=True)
                self.splits, lo = outer, end
                continue
            if self.splits > MAX_SPLITS:
                for row in self.lines(lo, hi):
                    self.one(row)
                return
            span = self.data[lo:hi]
            if not span or span.isspace():
                return
            try:
                table = self.reader._read_holey(span, self.schema)
            except pa.ArrowInvalid as exc:
                msg = str(exc)
                m = _CONFLICT.search(msg)
                if m is None or _is_syntax(msg):
                    if not self.validated:  # find every syntactically bad line of the span in one pass
                        self.validated = True
                        if self.blank_invalid(lo, hi):
                            continue
                elif m["col"] not in self.grouped:
                    self.grouped.add(m["col"])
                    outcome = self.by_kind(lo, hi, m["col"])
                    if outcome == "done":
                        return
                    if outcome == "retry":
                        continue
                self.failed = True
                self.splits += 1
                lo = self.split(lo, hi, span, msg)
                continue
            self.add(table, lo, hi)
            return

    def parse(self, r: int, bad: list[int]) -> Any:
        """Line ``r`` as JSON, or ``_UNPARSED`` after reporting it as a bad line and adding it to ``bad``."""
        line = self.line(r)
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.out.bad.append(BadLine(r, _bad_reason(line, str(exc)), str(exc)))
            bad.append(r)
            return _UNPARSED

    def blank_invalid(self, lo: int, hi: int) -> bool:
        bad: list[int] = []
        for r in self.nonblank(lo, hi):
            doc = self.parse(r, bad)
            if doc is _UNPARSED:
                continue
            if not isinstance(doc, dict):
                self.out.bad.append(BadLine(r, "not_an_object", "a line must hold one JSON object"))
                bad.append(r)
        self.blank(bad)
        return bool(bad)

    def by_kind(self, lo: int, hi: int, col: str) -> Literal["done", "retry", "no"]:
        """Mixed JSON kinds at ``col`` in the span: read the lines of each kind as a group of their own."""
        parts = [p for p in col.strip("/").split("/") if p]
        groups: dict[str | None, list[int]] = {}
        bad: list[int] = []
        for r in self.nonblank(lo, hi):
            doc = self.parse(r, bad)
            if doc is _UNPARSED:
                continue
            kinds = {_kind(v) for v in _values_at(doc, parts)} - {"null"}
            if len(kinds) > 1:
                self.out.bad.append(BadLine(r, "mixed_types", f"mixed types inside one record at {col}"))
                bad.append(r)
                continue
            groups.setdefault(next(iter(kinds)) if kinds else None, []).append(r)
        self.blank(bad)
        if None in groups and len(groups) > 1:  # lines without a value there go with the first kind
            loose = groups.pop(None)
            groups[next(iter(groups))] += loose
        if len(groups) < 2:
            return "retry" if bad else "no"
        keep = set()
        for rows in groups.values():
            keep |= set(rows)
        for rows in groups.values():
            sub = _Span(self.reader, bytes(self.data), self.schema, self.out, None)
            sub.grouped = self.grouped | {col}
            sub.validated = True
            sub.blank(sorted(keep - set(rows)))
            sub.run(lo, hi)
        return "done"

    def split(self, lo: int, hi: int, span: bytes | bytearray, msg: str) -> int:
        """Find the failing row by reading as one block; read the rows before it; return where to go on."""
        try:
            _read(span, explicit_schema(self.schema, self.reader.holes), one_block=True, threads=False)
            row = None  # parses as one block: a block-boundary artefact
        except pa.ArrowInvalid as exc:
            msg = str(exc)
            m = _ROW.search(msg)
            row = int(m["row"]) if m else None
        rows = self.nonblank(lo, hi)
        if row is None or row >= len(rows):  # cannot be placed (several objects on a line?): line by line
            for r in rows:
                self.one(r)
            return hi
        bad = rows[row]
        bad_start = int(_starts(self.data, self.out)[bad])
        if row > 0:  # the rows before it parsed together: one piece
            try:
                self.add(self.reader._read_holey(self.data[lo:bad_start], self.schema), lo, bad_start)
            except pa.ArrowInvalid:
                self.run(lo, bad_start, window=True)
            if _CONFLICT.search(msg) and not _is_syntax(msg):
                return bad_start  # mixed types: the rest starts a new piece with its own types
        self.one(bad)
        return self.end_of(bad)

    def one(self, row: int) -> None:
        line = self.line(row)
        if line.isspace():
            return
        try:
            table = self.reader._read_holey(line, self.schema)
        except pa.ArrowInvalid as exc:
            msg = str(exc)
            m = _CONFLICT.search(msg)
            if m and not _is_syntax(msg):
                self.out.bad.append(
                    BadLine(row, "mixed_types", f"mixed types inside one record at {m['col']}")
                )
            else:
                detail = _ROW.sub("", msg.replace("JSON parse error: ", "")).strip()
                self.out.bad.append(BadLine(row, _bad_reason(line, msg), detail))
            return
        if table.num_rows != 1:
            self.out.bad.append(BadLine(row, "not_one_object", "a line must hold exactly one JSON object"))
            return
        self.out.pieces.append(Piece(table, np.array([row], dtype=np.int64)))

    def add(self, table: pa.Table, lo: int, hi: int) -> None:
        whole = lo == 0 and hi == len(self.data)
        if whole and self.newlines is not None and table.num_rows == self.newlines:
            self.out.pieces.append(Piece(table, np.arange(self.newlines, dtype=np.int64)))  # the usual case
            return
        rows = self.nonblank(lo, hi)
        if len(rows) != table.num_rows:  # several objects on one line: find it line by line
            for r in rows:
                self.one(r)
            return
        self.out.pieces.append(Piece(table, np.asarray(rows, dtype=np.int64)))


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


def _values_at(doc: object, parts: list[str]) -> Iterator[object]:
    """The values at a reader error path (``trip/route/segments/[]/road``) in a decoded document; a field
    name that contains ``/`` is matched by trying longer names."""
    if not parts:
        yield doc
        return
    if parts[0] == "[]":
        if isinstance(doc, list):
            for item in doc:
                yield from _values_at(item, parts[1:])
        return
    if isinstance(doc, dict):
        for j in range(1, len(parts) + 1):
            name = "/".join(parts[:j])
            if name in doc:
                yield from _values_at(doc[name], parts[j:])
                return


def _starts(data: bytes | bytearray, out: Parsed) -> np.ndarray:
    if out.line_starts is None:
        out.line_starts = line_starts(data)
    return out.line_starts


def _is_syntax(msg: str) -> bool:
    return "changed from object to" in msg and "Column()" in msg


_UNPARSED = object()  # ``_Span.parse``: the line is not JSON (``None`` is a valid document)


def _bad_reason(line: bytes, msg: str) -> str:
    if "Column()" in msg:
        return "not_an_object"
    if "specified twice" in msg:
        return "duplicate_key"
    stripped = line.strip()
    if stripped.startswith(b"{") and not stripped.endswith(b"}"):
        return "truncated"
    return "invalid_json"


def _utf8_errors(data: bytes) -> list[int]:
    """Byte offsets of the lines that are not valid UTF-8."""
    if data.isascii():  # the usual case, and a fast scan
        return []
    try:
        data.decode("utf-8")
        return []
    except UnicodeDecodeError as exc:
        first = data.rfind(b"\n", 0, exc.start) + 1
    out: list[int] = []
    pos = first
    for line in data[first:].split(b"\n"):  # linear: each line on its own from the first bad one
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            out.append(pos)
        pos += len(line) + 1
    return out


def _line_of_offsets(starts: np.ndarray, offsets: list[int]) -> list[int]:
    return [int(np.searchsorted(starts, off, side="right")) - 1 for off in offsets]
