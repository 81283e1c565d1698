"""Change-data-capture messages as Debezium (Postgres connector) or AWS DMS would write them to Kafka."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import orjson

from enrich.tables import DEFAULT_MODEL, TableSpec

CdcFormat = Literal["debezium", "dms"]
Op = Literal["load", "insert", "update", "delete"]
_DEBEZIUM_OP = {"load": "r", "insert": "c", "update": "u", "delete": "d"}


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CdcEncoder:
    """Turns row changes into (key, value) Kafka messages with a source position that only grows.

    Debezium: ``source.lsn`` grows per change, ``source.txId`` per transaction; a delete is followed by a
    tombstone (same key, null value). DMS: ``metadata.stream-position`` and ``transaction-id`` grow the same
    way; deletes are ordinary messages.
    """

    def __init__(
        self,
        fmt: CdcFormat,
        *,
        db: str = "fleet",
        lsn_start: int = 24_000_000,
        tables: dict[str, TableSpec] | None = None,
    ) -> None:
        self.fmt = fmt
        self.keys = {name: spec.primary_key for name, spec in (tables or DEFAULT_MODEL.tables).items()}
        self.db = db
        self.lsn = lsn_start
        self.tx = 900_000

    def encode(
        self,
        table: str,
        op: Op,
        row: dict[str, Any],
        commit_ms: int,
        before: dict[str, Any] | None = None,
    ) -> list[tuple[bytes, bytes | None]]:
        pk = self.keys[table]
        key = orjson.dumps({pk: row[pk]})
        self.lsn += 8 + len(row) * 4
        self.tx += 1
        if self.fmt == "debezium":
            source: dict[str, Any] = {
                "version": "2.7.0.Final",
                "connector": "postgresql",
                "name": "fleet",
                "ts_ms": commit_ms,
                "snapshot": "true" if op == "load" else "false",
                "db": self.db,
                "schema": "public",
                "table": table,
                "txId": self.tx,
                "lsn": self.lsn,
            }
            envelope = {
                "before": row if op == "delete" else before,
                "after": None if op == "delete" else row,
                "source": source,
                "op": _DEBEZIUM_OP[op],
                "ts_ms": commit_ms + 40,
            }
            out: list[tuple[bytes, bytes | None]] = [(key, orjson.dumps(envelope))]
            if op == "delete":
                out.append((key, None))
            return out
        metadata = {
            "timestamp": _iso(commit_ms + 40),
            "record-type": "data",
            "operation": op,
            "partition-key-type": "primary-key",
            "schema-name": self.db,
            "table-name": table,
            "transaction-id": self.tx,
            "commit-timestamp": _iso(commit_ms),
            "stream-position": f"{self.lsn >> 32:08X}/{self.lsn & 0xFFFFFFFF:08X}.{self.tx % 16}",
        }
        message: dict[str, Any] = {"data": row, "metadata": metadata}
        if before is not None and op == "update":
            message["before"] = before
        return [(key, orjson.dumps(message))]
