"""The snapshot store: the latest row of every CDC table, never moving backwards.

Semantics (shared by the Redis store in ``stores/`` and the in-memory twin below, and tested against both):

* every row is kept with its source position; a change whose position is ≤ the stored one is ignored, so
  duplicates and out-of-order redelivery never roll a row back;
* a delete removes the row but keeps its position as a tombstone for ``tombstone_ttl_s``, so a late, older
  upsert cannot resurrect it;
* a truncate records its position for the table: rows at or before it are gone, changes at or before it
  are ignored;
* a table with an ``active`` spec keeps a pointer per parent to its active row (the car's running
  reservation), updated with the row;
* ``lookup`` returns, for rows of one table, the row plus every row its foreign keys reference plus the
  active rows pointing at those — the merged device + car + reservation record — in one call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from enrich.cdc import Change, parent_of
from enrich.tables import TableSpec


@dataclass(frozen=True, slots=True)
class StoredRow:
    row: dict[str, Any] | None  # None: deleted (tombstone)
    position: str


@dataclass(slots=True)
class ApplyResult:
    applied: int = 0
    stale: int = 0  # position ≤ stored (duplicate or out of order)
    applied_keys: list[tuple[str, str, str]] = field(default_factory=list)  # (table, pk, position)


class Merged:
    """A row of the root table with what it references: {table: row} (None where missing).

    Immutable by contract (cached and shared between events); ``cache`` holds what consumers derive from it
    once per snapshot version (e.g. the encoded rows spliced into every enriched event)."""

    __slots__ = ("cache", "positions", "rows")

    def __init__(self, rows: dict[str, dict[str, Any] | None], positions: dict[str, str | None]) -> None:
        self.rows = rows
        self.positions = positions
        self.cache: Any = None

    def get(self, table: str) -> dict[str, Any] | None:
        return self.rows.get(table)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Merged) and (self.rows, self.positions) == (other.rows, other.positions)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Merged({self.rows!r}, {self.positions!r})"


class SnapshotStore(Protocol):
    def apply(self, changes: Sequence[Change]) -> ApplyResult: ...

    def get(self, table: str, pk: str) -> StoredRow | None: ...

    def lookup(self, table: str, pks: Iterable[str]) -> dict[str, Merged]: ...

    def rows(self, table: str) -> dict[str, dict[str, Any]]: ...


def join_plan(tables: dict[str, TableSpec], root: str) -> list[tuple[str, str, list[str]]]:
    """For ``root``: (fk column, referenced table, tables whose active row per that parent to include)."""
    plan = []
    for col, ref in tables[root].foreign_keys.items():
        actives = [
            t.name
            for t in tables.values()
            if t.active is not None and t.foreign_keys.get(t.active.per) == ref and t.name != root
        ]
        plan.append((col, ref, actives))
    return plan


class InMemorySnapshotStore:
    """The in-memory twin of the Redis snapshot store (same semantics; for unit tests and tools)."""

    def __init__(self, tables: dict[str, TableSpec], *, tombstone_ttl_s: float = 7 * 86400) -> None:
        self.tables = tables
        self.tombstone_ttl_s = tombstone_ttl_s
        self._rows: dict[str, dict[str, StoredRow]] = {t: {} for t in tables}
        self._truncated: dict[str, str] = {}
        self._active: dict[tuple[str, str], str] = {}

    def _live(self, table: str, pk: str) -> StoredRow | None:
        stored = self._rows[table].get(pk)
        if stored is None:
            return None
        if stored.position <= self._truncated.get(table, ""):
            return None
        return stored

    def apply(self, changes: Sequence[Change]) -> ApplyResult:
        result = ApplyResult()
        for ch in changes:
            spec = self.tables[ch.table]
            floor = self._truncated.get(ch.table, "")
            if ch.op == "truncate":
                if ch.position > floor:
                    self._truncated[ch.table] = ch.position
                    for key in [k for k in self._active if k[0] == ch.table]:
                        del self._active[key]
                    result.applied += 1
                    result.applied_keys.append((ch.table, "", ch.position))
                else:
                    result.stale += 1
                continue
            current = self._live(ch.table, ch.pk)
            if ch.position <= floor or (current is not None and ch.position <= current.position):
                result.stale += 1
                continue
            previous = current.row if current is not None else None
            if ch.op == "upsert":
                self._rows[ch.table][ch.pk] = StoredRow(ch.row, ch.position)
            else:
                self._rows[ch.table][ch.pk] = StoredRow(None, ch.position)
            if spec.active is not None:
                self._update_active(spec, ch, previous)
            result.applied += 1
            result.applied_keys.append((ch.table, ch.pk, ch.position))
        return result

    def _update_active(self, spec: TableSpec, ch: Change, previous: dict[str, Any] | None) -> None:
        assert spec.active is not None
        per = spec.active.per
        for row in (previous, ch.row):
            parent = parent_of(spec, row).get(per)
            if parent is not None and self._active.get((spec.name, parent)) == ch.pk:
                del self._active[(spec.name, parent)]
        if ch.op == "upsert" and ch.row is not None and spec.active.is_active(ch.row):
            parent = parent_of(spec, ch.row).get(per)
            if parent is not None:
                self._active[(spec.name, parent)] = ch.pk

    def get(self, table: str, pk: str) -> StoredRow | None:
        return self._live(table, pk)

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        out = {}
        for pk in self._rows[table]:
            stored = self._live(table, pk)
            if stored is not None and stored.row is not None:
                out[pk] = stored.row
        return out

    def lookup(self, table: str, pks: Iterable[str]) -> dict[str, Merged]:
        plan = join_plan(self.tables, table)
        out: dict[str, Merged] = {}
        for pk in pks:
            root = self._live(table, pk)
            rows: dict[str, dict[str, Any] | None] = {table: root.row if root else None}
            positions: dict[str, str | None] = {table: root.position if root and root.row else None}
            for col, ref, actives in plan:
                parent = parent_of(self.tables[table], rows[table]).get(col)
                ref_row = self._live(ref, parent) if parent is not None else None
                rows[ref] = ref_row.row if ref_row else None
                positions[ref] = ref_row.position if ref_row and ref_row.row else None
                for active_table in actives:
                    apk = self._active.get((active_table, parent)) if parent is not None else None
                    arow = self._live(active_table, apk) if apk is not None else None
                    rows[active_table] = arow.row if arow else None
                    positions[active_table] = arow.position if arow and arow.row else None
            out[pk] = Merged(rows, positions)
        return out
