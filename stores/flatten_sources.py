"""Sources of the flattening job: files, directories and globs of JSON Lines, JSON arrays (plain or gzip)
and Parquet, read as bounded chunks of JSON Lines (memory is bounded by the chunk size, not the file).

* JSON Lines: read ``batch_bytes`` at a time, cut after the last newline (a line longer than that is
  read whole). Line numbers are the file's.
* JSON array files (first non-blank byte ``[``): a streaming scanner finds the top-level elements; each
  becomes one line (raw newlines can only be whitespace in valid JSON, so they become spaces). The line
  number of an element is the file line where it starts.
* gzip is recognised by its magic bytes, whatever the name.
* Parquet: the column holding the documents (``value`` of the enrichment flow's raw history, or
  ``--json-column``); the "line" of a document is its 1-based row. Null values are reported as bad.
"""

from __future__ import annotations

import glob
import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from enrich.flatten.arrow.chunk import Chunk

SUFFIXES = (".jsonl", ".ndjson", ".json", ".gz", ".parquet", ".jsonl.gz", ".json.gz", ".ndjson.gz")
Kind = Literal["jsonl", "json", "parquet"]
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class Missing:
    source: str
    reason: str


def expand(sources: list[str]) -> tuple[list[SourceFile], list[Missing]]:
    """Files named by ``sources`` (files, directories searched recursively, globs), each once, in order."""
    found: list[SourceFile] = []
    missing: list[Missing] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = str(p.resolve())
        if key not in seen and p.is_file():
            seen.add(key)
            found.append(SourceFile(str(p), p.stat().st_size))

    for src in sources:
        p = Path(src)
        if p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.name.endswith(SUFFIXES)
                and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
            )
            if not files:
                missing.append(Missing(src, "no .jsonl/.json/.gz/.parquet files in the directory"))
            for f in files:
                add(f)
        elif any(c in src for c in "*?["):
            matches = sorted(glob.glob(src, recursive=True))
            if not matches:
                missing.append(Missing(src, "the pattern matches no file"))
            for m in matches:
                add(Path(m))
        elif p.is_file():
            add(p)
        else:
            missing.append(Missing(src, "no such file"))
    return found, missing


def _open(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(decompressed stream, raw file) — the raw file's position tells progress."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


def kind_of(path: Path) -> Kind:
    with open(path, "rb") as f:
        if f.read(4) == b"PAR1":
            return "parquet"
    stream, raw = _open(path)
    try:
        head = stream.read(4096).lstrip()
    except (OSError, EOFError):
        head = b""
    finally:
        raw.close()
    return "json" if head.startswith(b"[") else "jsonl"


def chunks(path: Path, unit: int, batch_bytes: int, *, json_column: str | None = None) -> Iterator[Chunk]:
    """The chunks of one source file. An empty file yields one chunk with an ``empty_file`` bad record; a
    file that cannot be read (gone since the plan, no permission, corrupt gzip) ends with an
    ``unreadable`` one — the run goes on with the other files."""
    index = 0
    try:
        kind = kind_of(path)
        if kind == "parquet":
            inner = _parquet(path, unit, batch_bytes, json_column)
        elif kind == "json":
            inner = _json_array(path, unit, batch_bytes)
        else:
            inner = _json_lines(path, unit, batch_bytes)
        for chunk in inner:
            index = chunk.index + 1
            yield chunk
    except (OSError, EOFError, KeyError) as exc:
        yield Chunk(unit, str(path), index, b"", bad=[(0, "unreadable", f"{type(exc).__name__}: {exc}", b"")],
                    last=True)  # fmt: skip


def _json_lines(path: Path, unit: int, batch_bytes: int) -> Iterator[Chunk]:
    stream, raw = _open(path)
    name = str(path)
    index, line, carry, pos = 0, 1, b"", 0
    try:
        while True:
            error: Exception | None = None
            try:
                block = stream.read(batch_bytes)
            except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
                block, error = b"", exc
            if block:
                cut = block.rfind(b"\n")
                if cut < 0:
                    carry += block
                    continue
                if carry or cut + 1 < len(block):  # one copy; none when the block ends a line
                    body = b"".join((carry, memoryview(block)[: cut + 1]))
                    carry = block[cut + 1 :]
                else:
                    body = block
                now = raw.tell()
                newlines = body.count(b"\n")
                yield Chunk(unit, name, index, body, line, size=now - pos, newlines=newlines)
                pos, line, index = now, line + newlines, index + 1
                continue
            body = carry + b"\n" if carry else b""
            bad: list[tuple[int, str, str, bytes]] = []
            if error is not None:
                bad.append((line + body.count(b"\n"), "unreadable", f"cannot read further: {error}", b""))
            elif index == 0 and not body.strip():
                bad.append((0, "empty_file", "the file is empty", b""))
            yield Chunk(unit, name, index, body, line, size=raw.tell() - pos, bad=bad, last=True)
            return
    finally:
        raw.close()


def _json_array(path: Path, unit: int, batch_bytes: int) -> Iterator[Chunk]:
    """Stream the elements of a top-level JSON array (strings are skipped whole by the token pattern)."""
    stream, raw = _open(path)
    name = str(path)
    try:
        buf = stream.read(batch_bytes)
        start = buf.index(b"[") + 1
        line_at = 1 + buf.count(b"\n", 0, start)  # line number at buf[start]
        elem_start = start
        depth = 0
        lines: list[bytes] = []
        numbers: list[int] = []
        index, pos, eof, closed = 0, 0, False, False
        scan = start
        while not closed:
            m = _TOKEN.search(buf, scan)
            # a quote before the next token is a string not closed within the buffer
            if m is None or buf.find(b'"', scan, m.start()) >= 0:
                if eof:
                    break
                more = stream.read(batch_bytes)
                eof = not more
                # keep the unfinished element; rescan it from its start with the new data
                line_at += buf.count(b"\n", start, elem_start)
                buf, start = buf[elem_start:] + more, 0
                scan, elem_start, depth = 0, 0, 0
                continue
            tok = m.group(0)
            scan = m.end()
            if tok in (b"{", b"["):
                depth += 1
            elif tok in (b"}", b"]"):
                if depth == 0:  # the closing bracket of the array
                    _element(buf, elem_start, m.start(), start, line_at, lines, numbers)
                    closed = True
                    break
                depth -= 1
            elif tok == b"," and depth == 0:
                _element(buf, elem_start, m.start(), start, line_at, lines, numbers)
                elem_start = scan
                if sum(map(len, lines)) >= batch_bytes:
                    now = raw.tell()
                    yield Chunk(
                        unit, name, index, b"".join(lines), lines=np.array(numbers, np.int64), size=now - pos
                    )
                    pos, index, lines, numbers = now, index + 1, [], []
        bad: list[tuple[int, str, str, bytes]] = []
        if not closed:
            tail = buf[elem_start:].strip()
            bad.append(
                (
                    line_at + buf.count(b"\n", start, elem_start),
                    "truncated",
                    "the JSON array is not closed",
                    tail[:10_000],
                )
            )
        yield Chunk(
            unit,
            name,
            index,
            b"".join(lines),
            lines=np.array(numbers, np.int64),
            size=raw.tell() - pos,
            bad=bad,
            last=True,
        )
    except ValueError:  # no "[" at all: not an array after all
        raw.close()
        yield from _json_lines(path, unit, batch_bytes)
    finally:
        raw.close()


def _element(
    buf: bytes, lo: int, hi: int, start: int, line_at: int, lines: list[bytes], numbers: list[int]
) -> None:
    text = buf[lo:hi]
    stripped = text.strip()
    if not stripped:
        return
    lead = len(text) - len(text.lstrip())
    numbers.append(line_at + buf.count(b"\n", start, lo + lead))
    lines.append(stripped.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n")


def _parquet(path: Path, unit: int, batch_bytes: int, json_column: str | None) -> Iterator[Chunk]:
    from enrich.flatten.arrow.parquet import json_column as pick
    from enrich.flatten.arrow.parquet import parquet_documents

    column = pick(path, json_column)
    pos = 0
    index = 0
    for data, rows, nulls, read in parquet_documents(path, column, batch_bytes):
        bad = [(r, "null_value", f"column {column} is null", b"") for r in nulls]
        yield Chunk(unit, str(path), index, data, lines=rows, bad=bad, size=read - pos)
        pos, index = read, index + 1
    yield Chunk(unit, str(path), index, b"", size=max(0, path.stat().st_size - pos), last=True)
