"""Snapshot tables are configuration: a primary key, foreign keys, and an optional "active row" pointer.

The defaults describe the fleet database of the reference architecture; a YAML file (``ENRICH_TABLES_FILE``)
replaces them::

    tables:
      carinfo:     {primary_key: car_id}
      deviceinfo:  {primary_key: device_id, foreign_keys: {car_id: carinfo}}
      reservation:
        primary_key: reservation_id
        foreign_keys: {car_id: carinfo}
        active: {column: status, values: [ACTIVE], per: car_id}

All other columns pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from enrich.errors import EnrichError


class TableConfigError(EnrichError):
    reason = "table_config"


@dataclass(frozen=True, slots=True)
class ActiveSpec:
    """Marks at most one row per parent as "active" (e.g. the running reservation of a car)."""

    column: str
    values: frozenset[str]
    per: str  # the foreign-key column naming the parent

    def is_active(self, row: dict[str, Any]) -> bool:
        return str(row.get(self.column)) in self.values


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    primary_key: str
    foreign_keys: dict[str, str] = field(default_factory=dict)  # column -> referenced table
    active: ActiveSpec | None = None


DEFAULT_TABLES: dict[str, TableSpec] = {
    "carinfo": TableSpec("carinfo", "car_id"),
    "deviceinfo": TableSpec("deviceinfo", "device_id", {"car_id": "carinfo"}),
    "reservation": TableSpec(
        "reservation",
        "reservation_id",
        {"car_id": "carinfo"},
        ActiveSpec("status", frozenset({"ACTIVE"}), "car_id"),
    ),
}


def parse_tables(doc: Any) -> dict[str, TableSpec]:
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), dict):
        raise TableConfigError("expected a mapping with a 'tables' mapping", field_path="tables")
    out: dict[str, TableSpec] = {}
    for name, spec in doc["tables"].items():
        path = f"tables.{name}"
        if not isinstance(spec, dict) or not isinstance(spec.get("primary_key"), str):
            raise TableConfigError("each table needs a primary_key", field_path=f"{path}.primary_key")
        fks = spec.get("foreign_keys") or {}
        if not isinstance(fks, dict):
            raise TableConfigError("foreign_keys must map column to table", field_path=f"{path}.foreign_keys")
        active = None
        if spec.get("active") is not None:
            a = spec["active"]
            try:
                active = ActiveSpec(str(a["column"]), frozenset(str(v) for v in a["values"]), str(a["per"]))
            except (KeyError, TypeError) as exc:
                raise TableConfigError(
                    "active needs column, values and per", field_path=f"{path}.active"
                ) from exc
            if active.per not in fks:
                raise TableConfigError("active.per must be a foreign key", field_path=f"{path}.active.per")
        out[str(name)] = TableSpec(
            str(name), spec["primary_key"], {str(k): str(v) for k, v in fks.items()}, active
        )
    for spec in out.values():
        for col, ref in spec.foreign_keys.items():
            if ref not in out:
                raise TableConfigError(
                    f"foreign key to unknown table {ref!r}",
                    field_path=f"tables.{spec.name}.foreign_keys.{col}",
                )
    return out


def load_tables(path: Path | None) -> dict[str, TableSpec]:
    """The configured tables (the defaults when ``path`` is None)."""
    if path is None:
        return dict(DEFAULT_TABLES)
    return parse_tables(yaml.safe_load(path.read_text()))
