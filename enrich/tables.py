"""The snapshot's tables and the join model, both configuration (``ENRICH_TABLES_FILE``, YAML).

``tables`` lists every CDC table: its primary key and its foreign keys (column → referenced table); all
other columns pass through untouched. ``join`` names the roles the tables play when a telemetry event is
enriched::

    join:
      device: deviceinfo                     # the table whose primary key is the telemetry's device id
      car: {table: carinfo, via: car_id}     # the vehicle, by the device row's foreign key
      children:                              # tables hanging off the car, one row per role
        reservation: {table: reservation, via: car_id,
                      choose: {by: status, column: status, values: [ACTIVE]}}
        insurance:   {table: policy, via: car_id, choose: {by: interval, from: valid_from, to: valid_to}}
        inspection:  {table: inspection, via: car_id, choose: {by: latest}}

How a child row is chosen for an event at time ``t`` (every choice is made on the rows as they were at
``t``, see ``enrich.asof``):

* ``status``: the row whose ``column`` holds one of ``values``;
* ``interval``: the row with ``from <= t < to`` (a null ``from``/``to`` is open; epoch numbers in
  ``unit``, or ISO 8601 text, naive = UTC);
* ``latest``: the row changed last (greatest source position) at or before ``t``.

Where several rows qualify, the one changed last wins. Role names are what rules (``car.fleet``,
``reservation.customer_email``) and the enriched events, vehicle states and outliers call the rows; the
device and car roles are fixed names, the children are named by their keys. The car's key must be an
integer (vehicle states are keyed by it). The defaults (``enrich/default_tables.yaml``) describe the fleet
database of the reference architecture — no other part of the engine names a table.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from enrich.errors import EnrichError

ChooseBy = Literal["status", "interval", "latest"]
TimeUnit = Literal["ms", "us", "s"]
_UNIT_PER_MS: dict[str, float] = {"ms": 1.0, "us": 1000.0, "s": 0.001}
_ROLE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TABLE = re.compile(r"^[A-Za-z0-9_.$-]{1,128}$")
#: Names the enriched event, vehicle state and outlier snapshot use for themselves: no child role may take
#: one (a child's row sits beside them under its role name).
RESERVED_ROLES = frozenset(
    {"device", "car", "event_id", "device_id", "car_id", "ts", "seq", "signals", "enrichment", "ingested_at",
     "last_seen", "location", "devices", "updated_at", "version", "snapshot"}
)  # fmt: skip


class TableConfigError(EnrichError):
    reason = "table_config"


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    primary_key: str
    foreign_keys: dict[str, str] = field(default_factory=dict)  # column -> referenced table


def _epoch_ms(value: Any, unit: TimeUnit) -> float | None:
    """A row's time value as epoch ms (None when absent or unreadable)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value / _UNIT_PER_MS[unit]
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp() * 1000
    return None


@dataclass(frozen=True, slots=True)
class Choice:
    """How one child row per car is chosen as of an event time."""

    by: ChooseBy
    column: str = ""  # status: the column
    values: frozenset[str] = frozenset()  # status: the values that choose the row
    valid_from: str = "valid_from"  # interval: the columns
    valid_to: str = "valid_to"
    unit: TimeUnit = "ms"  # interval: unit of numeric times

    def holds(self, row: Mapping[str, Any], t: int) -> bool:
        """Whether ``row`` (as it was at ``t``) qualifies at ``t`` (``latest``: every row qualifies)."""
        if self.by == "status":
            return str(row.get(self.column)) in self.values
        if self.by == "interval":
            start = row.get(self.valid_from)
            end = row.get(self.valid_to)
            if start is not None:
                ms = _epoch_ms(start, self.unit)
                if ms is None or t < ms:
                    return False
            if end is not None:
                ms = _epoch_ms(end, self.unit)
                if ms is None or t >= ms:
                    return False
            return True
        return True

    def until(self, row: Mapping[str, Any]) -> float:
        """Until when a row whose newest version is ``row`` can still be chosen (``inf``: for as long as
        it stays so; the store takes the later of this and the version's own time). The snapshot forgets
        a child once that is older than its history horizon."""
        if self.by == "status":
            return float("inf") if str(row.get(self.column)) in self.values else 0.0
        if self.by == "interval":
            end = row.get(self.valid_to)
            if end is None:
                return float("inf")
            ms = _epoch_ms(end, self.unit)
            return float("inf") if ms is None else ms
        return float("inf")

    def bounds(self, row: Mapping[str, Any]) -> tuple[float | None, float | None]:
        """interval: the row's (from, to) in epoch ms, where the choice can change within a version."""
        if self.by != "interval":
            return None, None
        return _epoch_ms(row.get(self.valid_from), self.unit), _epoch_ms(row.get(self.valid_to), self.unit)


@dataclass(frozen=True, slots=True)
class ChildRole:
    """A table hanging off the car: ``name`` is the role, ``via`` the child's column naming the car."""

    name: str
    table: str
    via: str
    choose: Choice


@dataclass(frozen=True, slots=True)
class JoinModel:
    """The join: device row (by the telemetry key) → its car (by ``car_key``) → the car's chosen children."""

    tables: dict[str, TableSpec]
    device: str  # the table the telemetry key looks up
    car: str  # the vehicle table
    car_key: str  # the device row's column naming its car
    children: tuple[ChildRole, ...] = ()

    @property
    def roles(self) -> tuple[str, ...]:
        """The row roles of a merged record, in output order: device, car, then the children."""
        return ("device", "car", *(c.name for c in self.children))

    @property
    def attribute_roles(self) -> tuple[str, ...]:
        """The roles rules read attributes of (``car.*``, ``<child>.*``)."""
        return ("car", *(c.name for c in self.children))

    def table_of(self, role: str) -> str:
        if role == "device":
            return self.device
        if role == "car":
            return self.car
        for child in self.children:
            if child.name == role:
                return child.table
        raise KeyError(role)

    def via_of(self, table: str) -> str | None:
        """The column of ``table`` naming the car, for the tables the car keeps an index of (the devices
        and every child table); None for other tables."""
        if table == self.device:
            return self.car_key
        for child in self.children:
            if child.table == table:
                return child.via
        return None

    def child(self, table: str) -> ChildRole | None:
        for c in self.children:
            if c.table == table:
                return c
        return None


def _str(doc: Any, key: str, path: str, default: str | None = None) -> str:
    value = doc.get(key, default) if isinstance(doc, dict) else default
    if not isinstance(value, str) or not value:
        raise TableConfigError(f"{key} must be a non-empty string", field_path=f"{path}.{key}")
    return value


def parse_tables(doc: Any) -> dict[str, TableSpec]:
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), dict):
        raise TableConfigError("expected a mapping with a 'tables' mapping", field_path="tables")
    out: dict[str, TableSpec] = {}
    for name, spec in doc["tables"].items():
        path = f"tables.{name}"
        if not isinstance(name, str) or not _TABLE.match(name):
            raise TableConfigError("table names are letters, digits and _.$-", field_path=path)
        if not isinstance(spec, dict) or not isinstance(spec.get("primary_key"), str):
            raise TableConfigError("each table needs a primary_key", field_path=f"{path}.primary_key")
        if "active" in spec:
            raise TableConfigError(
                "'active' is replaced by the join model: join.children.<role>.choose "
                "{by: status, column: ..., values: [...]}",
                field_path=f"{path}.active",
            )
        fks = spec.get("foreign_keys") or {}
        if not isinstance(fks, dict):
            raise TableConfigError("foreign_keys must map column to table", field_path=f"{path}.foreign_keys")
        out[name] = TableSpec(name, spec["primary_key"], {str(k): str(v) for k, v in fks.items()})
    for spec in out.values():
        for col, ref in spec.foreign_keys.items():
            if ref not in out:
                raise TableConfigError(
                    f"foreign key to unknown table {ref!r}",
                    field_path=f"tables.{spec.name}.foreign_keys.{col}",
                )
    return out


def _fk_to(tables: dict[str, TableSpec], table: str, ref: str, via: Any, path: str) -> str:
    """The column of ``table`` that references ``ref``: ``via`` when given, else the only such column."""
    spec = tables.get(table)
    if spec is None:
        raise TableConfigError(f"unknown table {table!r}", field_path=f"{path}.table")
    cols = [c for c, t in spec.foreign_keys.items() if t == ref]
    if via is not None:
        if via not in cols:
            raise TableConfigError(
                f"{table}.{via} is not a foreign key to {ref} (declare it under tables.{table}.foreign_keys)",
                field_path=f"{path}.via",
            )
        return str(via)
    if len(cols) != 1:
        raise TableConfigError(f"name the column of {table} that references {ref}", field_path=f"{path}.via")
    return cols[0]


def _choice(doc: Any, path: str) -> Choice:
    if doc == "latest":
        return Choice("latest")
    if not isinstance(doc, dict) or doc.get("by") not in get_args(ChooseBy):
        raise TableConfigError("choose needs by: status | interval | latest", field_path=f"{path}.by")
    by = doc["by"]
    if by == "status":
        values = doc.get("values")
        if not isinstance(values, list) or not values:
            raise TableConfigError("status choice needs a list of values", field_path=f"{path}.values")
        return Choice("status", column=_str(doc, "column", path), values=frozenset(str(v) for v in values))
    if by == "interval":
        unit = doc.get("unit", "ms")
        if unit not in _UNIT_PER_MS:
            raise TableConfigError("unit is ms, us or s", field_path=f"{path}.unit")
        return Choice("interval", valid_from=_str(doc, "from", path, "valid_from"),
                      valid_to=_str(doc, "to", path, "valid_to"), unit=unit)  # fmt: skip
    return Choice("latest")


def parse_model(doc: Any) -> JoinModel:
    """The tables and the join model of a configuration document (raises ``TableConfigError``)."""
    tables = parse_tables(doc)
    join = doc.get("join")
    if not isinstance(join, dict):
        raise TableConfigError("expected a 'join' mapping (device, car, children)", field_path="join")
    device_doc = join.get("device")
    device = device_doc.get("table") if isinstance(device_doc, dict) else device_doc
    if not isinstance(device, str) or device not in tables:
        raise TableConfigError(
            "join.device names the table the telemetry key looks up", field_path="join.device"
        )
    car_doc = join.get("car")
    car = car_doc.get("table") if isinstance(car_doc, dict) else car_doc
    if not isinstance(car, str) or car not in tables or car == device:
        raise TableConfigError("join.car names the vehicle table", field_path="join.car")
    car_key = _fk_to(tables, device, car, car_doc.get("via") if isinstance(car_doc, dict) else None,
                     "join.car")  # fmt: skip
    children = []
    seen = {device, car}
    for role, child in (join.get("children") or {}).items():
        path = f"join.children.{role}"
        if not isinstance(role, str) or not _ROLE.match(role) or role in RESERVED_ROLES:
            raise TableConfigError(
                "a child role is a lowercase name (letters, digits, _) that is not a field of the events",
                field_path=path,
            )
        if not isinstance(child, dict):
            raise TableConfigError("a child needs table, via and choose", field_path=path)
        table = _str(child, "table", path)
        if table in seen:
            raise TableConfigError(f"table {table!r} plays two roles", field_path=f"{path}.table")
        seen.add(table)
        via = _fk_to(tables, table, car, child.get("via"), path)
        children.append(ChildRole(role, table, via, _choice(child.get("choose", "latest"), f"{path}.choose")))
    return JoinModel(tables, device, car, car_key, tuple(children))


def default_document() -> dict[str, Any]:
    text = resources.files("enrich").joinpath("default_tables.yaml").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


DEFAULT_MODEL = parse_model(default_document())
DEFAULT_TABLES: dict[str, TableSpec] = DEFAULT_MODEL.tables


def load_model(path: Path | None) -> JoinModel:
    """The configured tables and join model (the defaults when ``path`` is None)."""
    if path is None:
        return DEFAULT_MODEL
    return parse_model(yaml.safe_load(path.read_text()))


def load_tables(path: Path | None) -> dict[str, TableSpec]:
    """The configured tables (the defaults when ``path`` is None)."""
    return dict(load_model(path).tables)
