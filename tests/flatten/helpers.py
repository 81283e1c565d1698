"""Run the flattening job in-process (plan → work → finish, no bytewax) and read its tables back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flows.flatten_job import finish, plan, work


def run_job(sources: list[Path | str], out: Path, *, dataset: str = "golden", **kw: Any) -> dict[str, Any]:
    p = plan([str(s) for s in sources], dataset=dataset, out=out, registry_dir=out / "_registry", **kw)
    work(p, p.units, threads=False)
    return finish(p)


def read_tables(out: Path, *, drop: tuple[str, ...] = ("_file",)) -> dict[str, list[dict[str, Any]]]:
    """Every published table as rows sorted by ``_id`` (``_quarantine`` by file and line)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for folder in sorted(
        p for p in out.iterdir() if (p.is_dir() and not p.name.startswith("_")) or p.name == "_quarantine"
    ):
        files = sorted(folder.rglob("*.parquet"))
        if not files:
            continue
        parts = [pq.read_table(f) for f in files]
        table = pa.concat_tables(parts, promote_options="permissive")
        rows = [{k: v for k, v in r.items() if k not in drop} for r in table.to_pylist()]
        key = ("_line", "reason") if folder.name == "_quarantine" else ("_id",)
        tables[folder.name] = sorted(rows, key=lambda r: tuple(r.get(k) or 0 for k in key))
    return tables
