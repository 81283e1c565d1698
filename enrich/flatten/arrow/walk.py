"""Nested Arrow table → flat relational tables (Glue's relationalize / dlt's normaliser, vectorised).

* Struct levels become columns of their table, named by the safe names of their path segments joined by
  the separator (``trip.route.distance_km``).
* Every array becomes a child table ``<parent table>__<path>`` (``__item`` for the items of an array of
  arrays) with ``_id``, ``_parent_id`` (the parent row's ``_id``), ``_root_id`` and ``_idx`` (position in
  the array); its items' struct fields are its columns, a scalar item is the column ``value``. The parent
  row keeps the array's length in a column named after the array (0 = empty array, null = no array), so
  empty arrays and null arrays stay distinguishable. With ``scalar_lists="column"`` arrays of scalars stay
  list columns instead.
* Ids are int64: ``unit_base + line`` for root rows, ``unit_base + n`` for child rows with a counter per
  table that runs over the chunks of a unit (a source file), so ids never repeat within a dataset as long
  as unit numbers do not (the run ledger hands them out).
* The walk applies the actions decided by :func:`enrich.flatten.schema.reconcile` (cast, variant column,
  quarantine, drop) and records the first occurrence and an example value of drifting paths.

No per-row Python: everything is Arrow compute or numpy on whole columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from enrich.flatten.schema import Action, child_path, item_path

ROOT_META = ("_id", "_run", "_file", "_line")
CHILD_META = ("_id", "_parent_id", "_root_id", "_idx")
_CAMEL1 = re.compile(r"(.)([A-Z][a-z]+)")
_CAMEL2 = re.compile(r"([a-z0-9])([A-Z])")
_UNSAFE = re.compile(r"[^a-z0-9]+")
_SAFE_CACHE: dict[str, str] = {}


def safe_name(segment: str) -> str:
    """A SQL-safe snake_case name: ``CurrentVoltage`` → ``current_voltage``, ``a-b c`` → ``a_b_c``."""
    got = _SAFE_CACHE.get(segment)
    if got is None:
        s = _CAMEL2.sub(r"\1_\2", _CAMEL1.sub(r"\1_\2", segment)).lower()
        s = _UNSAFE.sub("_", s.replace("_", " ")).strip("_") or "_"
        if s[0].isdigit():
            s = "_" + s
        got = _SAFE_CACHE[segment] = s
    return got


@dataclass(slots=True)
class Probe:
    """Where a drifting path first shows: the root row and an example value."""

    root_row: int
    example: Any


@dataclass(slots=True)
class FlatTable:
    name: str
    columns: dict[str, pa.Array] = field(default_factory=dict)
    root_rows: np.ndarray | None = None  # root row of every row (None: this is the root table)

    def add(self, name: str, arr: pa.Array) -> None:
        if name in self.columns:  # two raw names with one safe name: keep both, deterministically
            n = 2
            while f"{name}_{n}" in self.columns:
                n += 1
            name = f"{name}_{n}"
        self.columns[name] = arr


@dataclass(slots=True)
class Walked:
    tables: dict[str, FlatTable]
    quarantine: dict[int, str]  # root row -> reason (the first one)
    probes: dict[str, Probe]
    dropped: dict[str, int]  # path -> values discarded


@dataclass(slots=True)
class UnitIds:
    """Id counters of one unit (source file), carried from chunk to chunk."""

    base: int
    next_child: dict[str, int] = field(default_factory=dict)

    def take(self, table: str, n: int) -> np.ndarray:
        start = self.next_child.get(table, 0)
        self.next_child[table] = start + n
        return np.arange(self.base + start, self.base + start + n, dtype=np.int64)


class _Walk:
    def __init__(
        self,
        root: str,
        actions: dict[str, Action],
        probe_paths: dict[str, Literal["value", "null"]],
        sep: str,
        scalar_lists: Literal["table", "column"],
        ids: UnitIds,
    ) -> None:
        self.root = root
        self.actions = actions
        self.probe_paths = probe_paths
        self.sep = sep
        self.scalar_lists = scalar_lists
        self.ids = ids
        self.tables: dict[str, FlatTable] = {}
        self.quarantine: dict[int, str] = {}
        self.probes: dict[str, Probe] = {}
        self.dropped: dict[str, int] = {}

    def roots(self, rows: np.ndarray, root_rows: np.ndarray | None) -> np.ndarray:
        return rows if root_rows is None else root_rows[rows]

    def probe(
        self, path: str, arr: pa.Array, parent_valid: pa.Array | None, root_rows: np.ndarray | None
    ) -> None:
        how = self.probe_paths.get(path)
        if how is None or path in self.probes:
            return
        if how == "value":
            mask = arr.is_valid()
        else:
            mask = arr.is_null() if parent_valid is None else pc.and_(arr.is_null(), parent_valid)
        idx = pc.index(mask, True).as_py()
        if idx is None or idx < 0:
            return
        row = int(self.roots(np.array([idx]), root_rows)[0])
        self.probes[path] = Probe(row, arr[idx].as_py() if how == "value" else None)

    def visit(
        self,
        arr: pa.Array,
        path: str,
        col: list[str],
        tb: FlatTable,
        ids: np.ndarray,
        root_ids: np.ndarray,
        root_rows: np.ndarray | None,
        parent_valid: pa.Array | None,
    ) -> None:
        self.probe(path, arr, parent_valid, root_rows)
        act = self.actions.get(path)
        if act is not None:
            if act.kind == "drop":
                self.dropped[path] = self.dropped.get(path, 0) + len(arr) - arr.null_count
                return
            if act.kind == "quarantine":
                if act.on == "value":
                    mask = arr.is_valid()
                else:
                    mask = arr.is_null() if parent_valid is None else pc.and_(arr.is_null(), parent_valid)
                rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
                for r in self.roots(rows, root_rows).tolist():
                    self.quarantine.setdefault(int(r), act.reason)
                if act.on == "value":
                    return
            elif act.kind == "variant":
                tb.add(
                    self.sep.join([*col[:-1], f"{col[-1]}__v_{act.tag}"]) if col else f"value__v_{act.tag}",
                    arr,
                )
                return
            elif act.kind == "cast":
                arr = arr.cast(act.to)
        t = arr.type
        if pa.types.is_struct(t):
            valid = arr.is_valid() if self._wants_valid(path) else None
            children = arr.flatten()
            for i in range(t.num_fields):
                name = t.field(i).name
                self.visit(
                    children[i],
                    child_path(path, name),
                    [*col, safe_name(name)],
                    tb,
                    ids,
                    root_ids,
                    root_rows,
                    valid,
                )
            return
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            if self.scalar_lists == "column" and not _nested(t.value_type):
                tb.add(self.sep.join(col) or "value", arr)
                return
            tb.add(self.sep.join(col) or "value", pc.list_value_length(arr))
            self.child(arr, path, col, tb, ids, root_ids, root_rows)
            return
        tb.add(self.sep.join(col) or "value", arr)

    def _wants_valid(self, prefix: str) -> bool:
        """Whether some probe or action below ``prefix`` needs the parent's validity (nullability only)."""
        return any(how == "null" and p.startswith(prefix) for p, how in self.probe_paths.items()) or any(
            a.on == "null" and p.startswith(prefix) for p, a in self.actions.items()
        )

    def child(
        self,
        arr: pa.Array,
        path: str,
        col: list[str],
        parent: FlatTable,
        parent_ids: np.ndarray,
        root_ids: np.ndarray,
        root_rows: np.ndarray | None,
    ) -> None:
        name = f"{parent.name}__{'__'.join(col) if col else 'item'}"
        values = arr.flatten()
        parents = pc.list_parent_indices(arr).to_numpy()
        n = len(values)
        offsets = arr.offsets.to_numpy()
        idx = np.arange(n, dtype=np.int64) - (offsets[parents] - offsets[0]) if n else np.zeros(0, np.int64)
        rows = parents if root_rows is None else root_rows[parents]
        ids = self.ids.take(name, n)
        tb = self.tables.get(name)
        if tb is None:
            tb = self.tables[name] = FlatTable(name, root_rows=rows)
        else:  # the same table reached again (cannot happen for one path; kept for safety)
            raise AssertionError(f"table {name} built twice")
        tb.columns["_id"] = pa.array(ids)
        tb.columns["_parent_id"] = pa.array(parent_ids[parents] if n else np.zeros(0, np.int64))
        tb.columns["_root_id"] = pa.array(root_ids[rows] if n else np.zeros(0, np.int64))
        tb.columns["_idx"] = pa.array(idx)
        self.visit(values, item_path(path), [], tb, ids, root_ids, rows, None)


def _nested(t: pa.DataType) -> bool:
    return bool(pa.types.is_struct(t) or pa.types.is_list(t) or pa.types.is_large_list(t))


def walk(
    table: pa.RecordBatch,
    *,
    root: str,
    root_ids: np.ndarray,
    ids: UnitIds,
    actions: dict[str, Action],
    probes: dict[str, Literal["value", "null"]],
    sep: str = ".",
    scalar_lists: Literal["table", "column"] = "table",
) -> Walked:
    """Flatten one piece. ``root_ids``: the ``_id`` of each row; the root table gets only data columns here
    (the caller adds ``_id``/``_run``/``_file``/``_line``)."""
    w = _Walk(root, actions, probes, sep, scalar_lists, ids)
    tb = w.tables[root] = FlatTable(root)
    for name, arr in zip(table.schema.names, table.columns, strict=True):
        w.visit(arr, child_path("", name), [safe_name(name)], tb, root_ids, root_ids, None, None)
    return Walked(w.tables, w.quarantine, w.probes, w.dropped)


def path_stats(table: pa.RecordBatch) -> dict[str, tuple[int, int]]:
    """Per path of a nested table: (non-null values, nulls where the parent was present)."""
    out: dict[str, tuple[int, int]] = {}

    def visit(arr: pa.Array, path: str, parent_nulls: int) -> None:
        nulls = arr.null_count
        out[path] = (len(arr) - nulls, nulls - parent_nulls)
        t = arr.type
        if pa.types.is_struct(t):
            children = arr.flatten()
            for i in range(t.num_fields):
                visit(children[i], child_path(path, t.field(i).name), nulls)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            visit(arr.flatten(), item_path(path), 0)

    for name, arr in zip(table.schema.names, table.columns, strict=True):
        visit(arr, child_path("", name), 0)
    return out
