"""Normalising Debezium and AWS DMS messages: operations, positions, tombstones, control records, errors."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from enrich.cdc import CdcError, Change, Skipped, normalise, normalise_batch
from enrich.records import Record
from enrich.tables import DEFAULT_TABLES, TableConfigError, load_model, load_tables, parse_model, parse_tables
from simulator.cdc import CdcEncoder
from tests.test_schemas import Target

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def one(value: bytes | None) -> Change | Skipped:
    return normalise(value, DEFAULT_TABLES)


@pytest.mark.parametrize("fmt", ["debezium", "dms"])
def test_every_operation_normalises_with_growing_positions(fmt: str) -> None:
    enc = CdcEncoder(fmt)  # type: ignore[arg-type]
    row = {"car_id": 7, "status": "ACTIVE", "fleet": "busan"}
    msgs = [
        *enc.encode("carinfo", "load", row, 1000),
        *enc.encode("carinfo", "insert", row, 1001),
        *enc.encode("carinfo", "update", {**row, "status": "MAINTENANCE"}, 1002, before=row),
        *enc.encode("carinfo", "delete", row, 1003),
    ]
    out = [one(v) for _k, v in msgs]
    changes = [c for c in out if isinstance(c, Change)]
    assert [c.op for c in changes] == ["upsert", "upsert", "upsert", "delete"]
    assert all(c.table == "carinfo" and c.pk == "7" for c in changes)
    assert changes[2].row is not None and changes[2].row["status"] == "MAINTENANCE"
    positions = [c.position for c in changes]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert [c.commit_ms for c in changes] == [1000, 1001, 1002, 1003]
    if fmt == "debezium":  # the delete is followed by a tombstone
        assert out[-1] == Skipped("tombstone", None, "null value (Debezium tombstone after a delete)")


def test_debezium_with_schema_payload_wrapper_and_mysql_positions() -> None:
    source: dict[str, Any] = {"connector": "mysql", "db": "fleet", "table": "deviceinfo", "ts_ms": 5}
    source.update(file="bin.000012", pos=4400, row=2)
    env: dict[str, Any] = {
        "before": None,
        "after": {"device_id": "d1", "car_id": 3},
        "source": source,
        "op": "c",
    }
    ch = one(orjson.dumps({"schema": {"type": "struct"}, "payload": env}))
    assert isinstance(ch, Change) and ch.pk == "d1" and ch.row == env["after"]
    later = one(orjson.dumps({**env, "source": {**source, "file": "bin.000013", "pos": 4}}))
    assert isinstance(later, Change) and later.position > ch.position  # next binlog file orders after
    assert one(orjson.dumps({"schema": {}, "payload": None})).kind == "tombstone"  # type: ignore[union-attr]


def test_debezium_truncate_and_dms_control() -> None:
    trunc = one(orjson.dumps({"source": {"table": "carinfo", "lsn": 77, "ts_ms": 1}, "op": "t", "ts_ms": 1}))
    assert isinstance(trunc, Change) and trunc.op == "truncate" and trunc.position == f"L{77:020d}"
    control = {
        "metadata": {"timestamp": "2026-01-01T00:00:00Z", "record-type": "control", "operation": "add-column",
                     "partition-key-type": "task-id", "schema-name": "fleet", "table-name": "carinfo"}
    }  # fmt: skip
    assert one(orjson.dumps(control)) == Skipped("control", "carinfo", "add-column")


def test_dms_without_stream_position_orders_by_commit_time_then_transaction() -> None:
    def msg(commit: str, tx: int) -> bytes:
        meta = {
            "timestamp": commit,
            "record-type": "data",
            "operation": "update",
            "partition-key-type": "primary-key",
            "schema-name": "fleet",
            "table-name": "carinfo",
            "transaction-id": tx,
            "commit-timestamp": commit,
        }
        return orjson.dumps({"data": {"car_id": 1}, "metadata": meta})  # fmt: skip

    a = one(msg("2026-01-01T00:00:00.5Z", 9))
    b = one(msg("2026-01-01T00:00:00.5Z", 10))
    c = one(msg("2026-01-01T00:00:01Z", 1))
    assert isinstance(a, Change) and isinstance(b, Change) and isinstance(c, Change)
    assert a.position < b.position < c.position


@pytest.mark.parametrize(
    ("value", "reason", "field_path"),
    [
        (b"{not json", "not_json", None),
        (b"[1,2]", "unknown_format", None),
        (b'{"hello": "world"}', "unknown_format", None),
        (b'{"op":"c","source":{"table":"fuel","lsn":1},"after":{"id":1}}', "unknown_table", "source.table"),
        (
            b'{"op":"c","source":{"table":"carinfo","lsn":1},"after":{"status":"x"}}',
            "missing_key",
            "after.car_id",
        ),
        (b'{"op":"x","source":{"table":"carinfo","lsn":1},"after":{"car_id":1}}', "unknown_format", "op"),
        (b'{"op":"d","source":{"table":"carinfo","lsn":1},"before":null}', "missing_key", "before"),
        (
            b'{"data":{"car_id":1},"metadata":{"record-type":"data","operation":"merge","table-name":"carinfo"}}',
            "unknown_format",
            "metadata.operation",
        ),
    ],
)
def test_bad_messages_raise_with_reason_and_field_path(
    value: bytes, reason: str, field_path: str | None
) -> None:
    with pytest.raises(CdcError) as info:
        one(value)
    assert info.value.reason == reason
    assert info.value.field_path == field_path


def test_batch_turns_bad_messages_into_dead_letters_with_origin_and_bytes() -> None:
    enc = CdcEncoder("debezium")
    good = enc.encode("carinfo", "insert", {"car_id": 1}, 5)[0][1]
    records = [
        Record("cdc.fleet.carinfo", 1, 41, b'{"car_id":1}', good, 123),
        Record("cdc.fleet.carinfo", 1, 42, b"k", b"\xff garbage", 124),
        Record("cdc.fleet.carinfo", 1, 43, b'{"car_id":1}', None, 125),
    ]
    batch = normalise_batch(records, DEFAULT_TABLES, now_ms=999)
    assert len(batch.changes) == 1 and batch.skipped == {"tombstone": 1, "control": 0}
    assert len(batch.dead) == 1
    key, value = batch.dead[0]
    letter = orjson.loads(value)
    Target("dead-letter", None).validator().validate(letter)
    assert key == b"k"
    assert letter["reason"] == "not_json" and letter["stage"] == "cdc.normalise"
    assert letter["source"] == {"topic": "cdc.fleet.carinfo", "partition": 1, "offset": 42, "timestamp": 124,
                                "key_b64": base64.b64encode(b"k").decode()}  # fmt: skip
    assert base64.b64decode(letter["value_b64"]) == b"\xff garbage"
    assert letter["failed_at"] == 999


@pytest.mark.parametrize("kind", ["cdc-debezium", "cdc-dms"])
def test_published_schema_examples_normalise(kind: str) -> None:
    for path in sorted((EXAMPLES / kind).glob("valid-*.json")):
        out = normalise(path.read_bytes(), DEFAULT_TABLES)
        assert isinstance(out, Change | Skipped), path.name


def test_tables_are_configuration(tmp_path: Path) -> None:
    cfg = tmp_path / "tables.yaml"
    cfg.write_text(
        "tables:\n"
        "  fleet_car: {primary_key: id}\n"
        "  sensor: {primary_key: serial, foreign_keys: {car: fleet_car}}\n"
        "join: {device: sensor, car: fleet_car}\n"
    )
    tables = load_tables(cfg)
    ch = normalise(orjson.dumps({"op": "c", "source": {"table": "sensor", "lsn": 3},
                                 "after": {"serial": "S1", "car": 5, "extra": [1]}}), tables)  # fmt: skip
    assert isinstance(ch, Change) and ch.pk == "S1" and ch.row == {"serial": "S1", "car": 5, "extra": [1]}
    with pytest.raises(CdcError):
        normalise(orjson.dumps({"op": "c", "source": {"table": "carinfo", "lsn": 3}, "after": {}}), tables)
    with pytest.raises(Exception, match="unknown table"):
        parse_tables({"tables": {"a": {"primary_key": "id", "foreign_keys": {"b_id": "b"}}}})
    model = load_model(cfg)
    assert (model.device, model.car, model.car_key, model.children) == ("sensor", "fleet_car", "car", ())


@pytest.mark.parametrize(
    ("join", "field"),
    [
        ({"device": "nope", "car": "car"}, "join.device"),
        ({"device": "dev", "car": "dev"}, "join.car"),
        ({"device": "dev", "car": "car", "children": {"signals": {"table": "res"}}}, "join.children.signals"),
        ({"device": "dev", "car": "car", "children": {"res": {"table": "res", "via": "x"}}},
         "join.children.res.via"),
        ({"device": "dev", "car": "car", "children": {"res": {"table": "res", "choose": {"by": "status"}}}},
         "join.children.res.choose.values"),
        ({"device": "dev", "car": "car", "children": {"res": {"table": "res", "choose": {"by": "soon"}}}},
         "join.children.res.choose.by"),
    ],
)  # fmt: skip
def test_join_model_errors_name_the_field(join: dict[str, object], field: str) -> None:
    doc = {
        "tables": {
            "car": {"primary_key": "id"},
            "dev": {"primary_key": "id", "foreign_keys": {"car_id": "car"}},
            "res": {"primary_key": "id", "foreign_keys": {"car_id": "car"}},
        },
        "join": join,
    }
    with pytest.raises(TableConfigError) as info:
        parse_model(doc)
    assert info.value.field_path == field


def test_the_old_active_pointer_points_to_the_join_model() -> None:
    doc = {"tables": {"r": {"primary_key": "id", "active": {"column": "s", "values": ["A"], "per": "c"}}}}
    with pytest.raises(TableConfigError, match=r"join\.children"):
        parse_tables(doc)
