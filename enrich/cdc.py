"""Normalise change-data-capture messages (Debezium envelope, AWS DMS) into one ``Change`` shape.

A change carries a **source position** that totally orders the changes of a table, encoded as a string
whose lexicographic order is the numeric order (fixed-width decimal components), so stores can compare
positions without parsing:

* Debezium Postgres: ``L`` + LSN
* Debezium MySQL: ``B`` + binlog file number, position, row within the event
* AWS DMS: ``S`` + the ``stream-position`` ``HI/LO.N`` parts (hex, hex, decimal)
* otherwise: ``T`` + commit time (ms), transaction id

Positions of different kinds do not compare meaningfully; one table is fed by one connector.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from enrich.deadletter import dead_letter
from enrich.errors import EnrichError
from enrich.records import Record
from enrich.tables import TableSpec

ChangeOp = Literal["upsert", "delete", "truncate"]


class CdcError(EnrichError):
    """A CDC message that cannot be applied; ``reason`` names the class of problem."""

    reason = "cdc_error"


class Change(NamedTuple):
    """One row change. ``load``: it comes from an initial load (Debezium ``r``, DMS ``load``), so a row's
    first version from it says the row exists, not when it was created (see ``enrich.asof``)."""

    table: str
    pk: str
    op: ChangeOp
    row: dict[str, Any] | None
    position: str
    commit_ms: int
    load: bool = False


class Skipped(NamedTuple):
    """A message that is not a row change: a Debezium tombstone or a DMS control (DDL) record."""

    kind: Literal["tombstone", "control"]
    table: str | None
    detail: str


_POS_FORMATS = {n: "%s" + ".".join(["%020d"] * n) for n in (1, 2, 3)}


def _pos(kind: str, *parts: int) -> str:
    return _POS_FORMATS[len(parts)] % (kind, *parts)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CONTROL = re.compile(r"[\x00-\x1f]")
_BINLOG_NUM = re.compile(r"(\d+)$")
_DMS_POS = re.compile(r"^([0-9A-Fa-f]+)/([0-9A-Fa-f]+)(?:\.(\d+))?$")


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _iso_ms(value: Any, path: str) -> int:
    if not isinstance(value, str):
        raise CdcError("timestamp missing", reason="bad_position", field_path=path)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CdcError(f"bad timestamp {value!r}", reason="bad_position", field_path=path) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return (parsed - _EPOCH) // dt.timedelta(milliseconds=1)


def _pk(spec: TableSpec, row: Any, path: str) -> str:
    if type(row) is not dict:
        raise CdcError("row missing", reason="missing_key", field_path=path)
    value = row.get(spec.primary_key)
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str and value and value.isprintable():  # the common case: no control characters
        return value  # type: ignore[no-any-return]
    if value is None or isinstance(value, dict | list) or _CONTROL.search(str(value)):
        raise CdcError(
            f"primary key {spec.primary_key!r} missing",
            reason="missing_key",
            field_path=f"{path}.{spec.primary_key}",
        )
    return str(value)


def _table(tables: dict[str, TableSpec], name: Any, path: str) -> TableSpec:
    spec = tables.get(name) if type(name) is str else None
    if spec is None:
        raise CdcError(f"unknown table {name!r}", reason="unknown_table", field_path=path)
    return spec


def _debezium(doc: dict[str, Any], tables: dict[str, TableSpec]) -> Change:
    source = doc.get("source")
    if type(source) is not dict:
        raise CdcError("Debezium envelope without source", reason="unknown_format", field_path="source")
    spec = _table(tables, source.get("table"), "source.table")
    commit_ms = source.get("ts_ms")
    if type(commit_ms) is not int:
        commit_ms = _int(doc.get("ts_ms"), 0)
    lsn = source.get("lsn")
    if type(lsn) is int:
        position = f"L{lsn:020d}"
    elif isinstance(source.get("file"), str) and isinstance(source.get("pos"), int):
        m = _BINLOG_NUM.search(source["file"])
        position = _pos("B", int(m.group(1)) if m else 0, source["pos"], _int(source.get("row"), 0))
    else:
        position = _pos("T", commit_ms, _int(source.get("txId"), 0))
    op = doc.get("op")
    if op in {"u", "c", "r"}:
        row = doc.get("after")
        pk = _pk(spec, row, "after")
        return Change(spec.name, pk, "upsert", row, position, commit_ms, op == "r")
    if op == "d":
        row = doc.get("before")
        pk = _pk(spec, row, "before")
        return Change(spec.name, pk, "delete", row, position, commit_ms)
    if op == "t":
        return Change(spec.name, "", "truncate", None, position, commit_ms)
    raise CdcError(f"unknown Debezium op {op!r}", reason="unknown_format", field_path="op")


_DMS_OPS: dict[str, ChangeOp] = {"load": "upsert", "insert": "upsert", "update": "upsert", "delete": "delete"}


def _dms(doc: dict[str, Any], tables: dict[str, TableSpec]) -> Change | Skipped:
    meta = doc["metadata"]
    if meta.get("record-type") == "control":
        return Skipped("control", meta.get("table-name"), str(meta.get("operation")))
    if meta.get("record-type") != "data":
        raise CdcError("unknown record-type", reason="unknown_format", field_path="metadata.record-type")
    spec = _table(tables, meta.get("table-name"), "metadata.table-name")
    op = _DMS_OPS.get(meta.get("operation", ""))
    if op is None:
        raise CdcError(
            f"unknown DMS operation {meta.get('operation')!r}",
            reason="unknown_format",
            field_path="metadata.operation",
        )
    commit_raw = meta.get("commit-timestamp", meta.get("timestamp"))
    commit_ms = _iso_ms(commit_raw, "metadata.commit-timestamp")
    stream = meta.get("stream-position")
    m = _DMS_POS.match(stream) if isinstance(stream, str) else None
    if m:
        position = _pos("S", int(m.group(1), 16), int(m.group(2), 16), int(m.group(3) or 0))
    else:
        tx = meta.get("transaction-id")
        position = _pos("T", commit_ms, tx if isinstance(tx, int) else 0)
    row = doc.get("data")
    pk = _pk(spec, row, "data")
    return Change(spec.name, pk, op, row, position, commit_ms, meta.get("operation") == "load")


def normalise(value: bytes | None, tables: dict[str, TableSpec]) -> Change | Skipped:
    """One CDC message → a ``Change`` (or ``Skipped``). Raises ``CdcError`` with reason and field path."""
    if value is None:
        return Skipped("tombstone", None, "null value (Debezium tombstone after a delete)")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise CdcError(f"not JSON: {exc}", reason="not_json") from exc
    if type(doc) is not dict:
        raise CdcError("not a JSON object", reason="unknown_format")
    if "payload" in doc and "schema" in doc:  # Debezium with the JSON converter's schemas enabled
        doc = doc["payload"]
        if doc is None:
            return Skipped("tombstone", None, "null payload")
        if not isinstance(doc, dict):
            raise CdcError("payload is not an object", reason="unknown_format", field_path="payload")
    if "op" in doc and "source" in doc:
        return _debezium(doc, tables)
    if isinstance(doc.get("metadata"), dict) and ("data" in doc or "record-type" in doc["metadata"]):
        return _dms(doc, tables)
    raise CdcError("neither a Debezium envelope nor an AWS DMS message", reason="unknown_format")


@dataclass(slots=True)
class CdcBatch:
    """The outcome of normalising one micro-batch: changes to apply, dead letters, skipped counts."""

    changes: list[Change]
    dead: list[tuple[bytes | None, bytes]]
    skipped: dict[str, int]
    records: int


def normalise_batch(records: list[Record], tables: dict[str, TableSpec], now_ms: int) -> CdcBatch:
    """Normalise a batch; bad messages become dead letters (reason, field path, origin, original bytes)."""
    changes: list[Change] = []
    dead: list[tuple[bytes | None, bytes]] = []
    skipped = {"tombstone": 0, "control": 0}
    append = changes.append
    for rec in records:
        try:
            out = normalise(rec.value, tables)
        except CdcError as exc:
            dead.append(
                dead_letter(exc, stage="cdc.normalise", source=rec.ref(), value=rec.value, now_ms=now_ms)
            )
            continue
        if type(out) is Change:
            append(out)
        else:
            skipped[out.kind] += 1  # type: ignore[union-attr]
    return CdcBatch(changes, dead, skipped, len(records))
