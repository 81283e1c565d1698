"""Output of the flattening job: staged while the run works, published when it is done.

Layout::

    <out>/<table>/[<key>=<value>/…]part-r<run>-u<unit>-c<chunk>.parquet     published tables (zstd)
    <out>/_staging/<dataset>/r<run>/…                                       the same, while the run works
    <out>/_staging/<dataset>/r<run>/_results/u<unit>-c<chunk>.json          what each chunk saw
    <out>/_staging/<dataset>/r<run>/plan.json                               the run's plan

A chunk's result file is written (atomically) after its Parquet files, so a result means its tables are
staged. Publishing renames every staged file into place (same filesystem: each rename is atomic); a
crashed publish is rolled forward by publishing again, since renaming is idempotent here. Readers
(DuckDB, Trino, Spark, Athena) see whole files only, and a run's rows appear when it is published, never
half of a crashed run: its staging directory is removed by the next run of the dataset.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from enrich.flatten.arrow.chunk import ChunkResult
from enrich.flatten.arrow.parquet import by_partition, write_parquet
from stores.schema_registry import replace_atomic

RESULTS = "_results"


def staging_dir(out: Path, dataset: str, run: int) -> Path:
    return out / "_staging" / dataset / f"r{run:06d}"


def result_doc(r: ChunkResult) -> dict[str, Any]:
    return {
        "unit": r.unit,
        "index": r.index,
        "file": r.file,
        "rows": r.rows,
        "quarantined": r.quarantined,
        "bad": r.bad,
        "dropped": r.dropped,
        "records": r.records,
        "size": r.size,
        "last": r.last,
        "pieces": [{"tree": p.tree, "stats": {k: list(v) for k, v in p.stats.items()}} for p in r.pieces],
        "events": [
            {
                "path": e.path,
                "change": e.change,
                "old_type": e.old_type,
                "new_type": e.new_type,
                "origin": e.origin,
                "policy": e.policy,
                "example": e.example,
                "first_seen": e.first_seen,
            }
            for e in r.events
        ],
    }


class Staging:
    def __init__(self, out: Path, dataset: str, run: int) -> None:
        self.out = out
        self.dir = staging_dir(out, dataset, run)
        self.run = run

    def write(self, r: ChunkResult) -> None:
        """Stage the tables of one chunk, then its result (idempotent: a replayed chunk overwrites)."""
        name = f"part-r{self.run:06d}-u{r.unit:07d}-c{r.index:05d}.parquet"
        for table_name, table in r.tables.items():
            for part, rows in by_partition(table):
                if rows.num_rows:
                    write_parquet(
                        rows, self.dir / table_name / part / name if part else self.dir / table_name / name
                    )
        replace_atomic(self.dir / RESULTS / f"u{r.unit:07d}-c{r.index:05d}.json", result_doc(r))

    def results(self) -> Iterator[dict[str, Any]]:
        folder = self.dir / RESULTS
        if folder.is_dir():
            for p in sorted(folder.glob("u*-c*.json")):
                yield orjson.loads(p.read_bytes())

    def done_bytes(self) -> tuple[int, int]:
        """(source bytes, records) of the chunks finished so far (for progress)."""
        size = records = 0
        for doc in self.results():
            size += int(doc.get("size", 0))
            records += int(doc.get("records", 0))
        return size, records

    def staged_files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.rglob("*.parquet") if RESULTS not in p.parts)

    def publish(self) -> list[Path]:
        """Move every staged table file into place. Safe to repeat after a crash."""
        moved = []
        for src in self.staged_files():
            dst = self.out / src.relative_to(self.dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved.append(dst)
        return moved

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def remove_stale(out: Path, dataset: str, keep: int | None = None) -> list[Path]:
    """Remove the staging directories of earlier runs of ``dataset`` (crashed before publishing)."""
    root = out / "_staging" / dataset
    gone = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name != (f"r{keep:06d}" if keep is not None else None):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    return gone
