"""Parquet in and out for the flattening job (zstd), and Parquet sources whose column holds JSON documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enrich.flatten.arrow.chunk import PARTITION_COLUMN

JSON_COLUMNS = ("value", "json", "payload", "document", "doc")


ID_COLUMNS = ("_id", "_parent_id", "_root_id", "_line", "_idx")


def write_parquet(table: pa.Table, path: Path) -> None:
    """zstd; dictionaries for strings only (ids and measurements rarely repeat), ids delta-encoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = table.schema
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_dictionary(f.type)]
    deltas = {c: "DELTA_BINARY_PACKED" for c in ID_COLUMNS if c in schema.names}
    pq.write_table(table, path, compression="zstd", use_dictionary=strings, column_encoding=deltas or None)


def by_partition(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """Split on the hidden partition column (dropped); ``""`` when the table has none."""
    if PARTITION_COLUMN not in table.column_names:
        yield "", table
        return
    parts = table.column(PARTITION_COLUMN)
    rest = table.drop_columns([PARTITION_COLUMN])
    values = pc.unique(parts).to_pylist()
    if len(values) == 1:
        yield str(values[0]), rest
        return
    for value in values:
        yield str(value), rest.filter(pc.equal(parts, value))


def read_table(path: Path) -> pa.Table:
    return pq.read_table(path)


def json_column(path: Path, wanted: str | None) -> str:
    """The column of a Parquet file that holds the JSON documents."""
    schema = pq.read_schema(path)
    names = schema.names
    if wanted:
        if wanted not in names:
            raise KeyError(f"{path}: no column {wanted!r} (has {', '.join(names)})")
        return wanted
    for name in JSON_COLUMNS:
        if name in names:
            return name
    texts = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_string(f.type)]
    if len(texts) == 1:
        return str(texts[0])
    raise KeyError(f"{path}: which column holds the JSON? (--json-column; has {', '.join(names)})")


def parquet_documents(
    path: Path, column: str, batch_bytes: int
) -> Iterator[tuple[bytes, np.ndarray, list[int], int]]:
    """Chunks of documents: (lines joined by ``\\n``, the 1-based row of each line, rows whose value is
    null, bytes of the source read so far)."""
    f = pq.ParquetFile(path)
    meta = f.metadata
    total = max(1, meta.num_rows)
    size = path.stat().st_size
    avg = (
        max(64, meta.row_group(0).total_byte_size // max(1, meta.row_group(0).num_rows))
        if meta.num_row_groups
        else 1024
    )
    rows_per = max(1, batch_bytes // avg)
    row0 = 0
    for batch in f.iter_batches(batch_size=rows_per, columns=[column]):
        arr = batch.column(0)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.binary())
        n = len(arr)
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(valid).astype(np.int64) + row0 + 1
        nulls = (np.flatnonzero(~valid) + row0 + 1).tolist()
        docs = arr.filter(pa.array(valid)) if nulls else arr
        docs = pc.replace_substring(docs, "\n", " ")
        lists = pa.ListArray.from_arrays(pa.array([0, len(docs)], pa.int32()), docs)
        joined = pc.binary_join(lists, pa.scalar(b"\n", pa.binary()))
        data = (joined[0].as_py() or b"") + b"\n" if len(docs) else b""
        row0 += n
        yield data, rows, nulls, int(size * row0 / total)
