"""The join core (enrich.pipeline.join) on the in-memory snapshot twin: no Kafka, no Redis."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import orjson
import pytest

from enrich.cdc import Change
from enrich.pipeline.encode import enriched_event
from enrich.pipeline.join import JoinConfig, JoinCore
from enrich.pipeline.roles import DEFAULT_ROLES
from enrich.records import Record
from enrich.snapshot import InMemorySnapshotStore, Merged
from enrich.tables import DEFAULT_TABLES
from enrich.telemetry import decode_telemetry

NOW = 1_790_000_000_000


class Snap:
    """The in-memory snapshot store behind the ``Lookup`` port, counting calls."""

    def __init__(self) -> None:
        self.store = InMemorySnapshotStore(DEFAULT_TABLES)
        self.calls = 0
        self.pos = 0

    def __call__(self, device_ids: Collection[str]) -> Mapping[str, Merged | None]:
        self.calls += 1
        return self.store.lookup("deviceinfo", device_ids)

    def put(self, table: str, pk: str, row: dict[str, Any]) -> None:
        self.pos += 1
        self.store.apply([Change(table, pk, "upsert", row, f"L{self.pos:05d}", 1)])

    def car(self, car: int, device: str, **extra: Any) -> None:
        self.put("carinfo", str(car), {"car_id": car, "fleet": "busan", **extra})
        self.put("deviceinfo", device, {"device_id": device, "car_id": car})


def rec(
    offset: int,
    device: str,
    seq: int,
    ts: int = NOW,
    signals: dict[str, Any] | None = None,
    partition: int = 0,
) -> Record:
    body = orjson.dumps(
        {"device_id": device, "ts": ts, "seq": seq, "signals": signals or {"Vehicle.Speed": 1.0}}
    )
    return Record("telemetry", partition, offset, device.encode(), body, ts)


def docs(batch: Any) -> list[dict[str, Any]]:
    return [orjson.loads(b) for b in batch.bodies]


def test_enriched_bytes_are_the_document_and_keyed_by_car() -> None:
    snap = Snap()
    snap.car(7, "d7", model="Kia Ray")
    snap.put(
        "reservation",
        "r1",
        {"reservation_id": "r1", "car_id": 7, "status": "ACTIVE", "customer_email": "a@b.c"},
    )
    core = JoinCore(snap)
    batch = core.process([rec(0, "d7", 1, signals={"Vehicle.Speed": "12.5"}), rec(1, "d7", 2)], NOW)
    assert snap.calls == 1  # one lookup per batch
    first = docs(batch)[0]
    tel = decode_telemetry(batch.records[0].value)
    expected = enriched_event(tel, snap(["d7"])["d7"], DEFAULT_ROLES, attempts=0, now_ms=NOW)
    assert first == expected and list(first) == list(expected)  # same fields, same order
    assert first["signals"] == {"Vehicle.Speed": 12.5}
    assert first["reservation"]["customer_email"] == "a@b.c" and first["car"]["model"] == "Kia Ray"
    assert batch.keys == [b"7", b"7"] and [r.offset for r in batch.sources] == [0, 1]
    assert batch.progress == NOW and list(batch.cars) == [7] and len(batch.cars[7].events) == 2
    assert [r[1] for r in batch.enriched_rows] == ["d7:1", "d7:2"]


def test_missing_rows_wait_then_join_or_leave_as_missing() -> None:
    snap = Snap()
    core = JoinCore(snap, JoinConfig(max_wait_ms=1000))
    first = core.process([rec(0, "late", 1), rec(1, "ghost", 1), rec(2, "late", 2)], NOW)
    assert first.bodies == [] and first.pending == 3 and core.has_pending
    snap.car(1, "late")
    second = core.process([rec(3, "late", 3)], NOW + 200)
    out = docs(second)
    # late's events leave in order, with the attempts they took; ghost keeps waiting
    assert [(d["device_id"], d["seq"], d["enrichment"]["attempts"]) for d in out] == [
        ("late", 1, 1),
        ("late", 2, 1),
        ("late", 3, 0),
    ]
    assert all(d["enrichment"]["status"] == "ok" for d in out) and second.retried == 2
    third = core.process([], NOW + 1000)
    assert [(d["device_id"], d["enrichment"]["status"], d["car_id"]) for d in docs(third)] == [
        ("ghost", "missing", None)
    ]
    assert third.misses == {"missing": 1} and not core.has_pending
    assert third.keys == [b"ghost"]  # no car: keyed by device


def test_a_partial_record_and_the_pending_bound() -> None:
    snap = Snap()
    snap.put("deviceinfo", "d9", {"device_id": "d9", "car_id": 9})  # its car is not in the snapshot
    core = JoinCore(snap, JoinConfig(max_pending=2))
    batch = core.process([rec(i, "d9", i) for i in range(5)], NOW)
    assert batch.pending == 2
    assert [d["enrichment"]["status"] for d in docs(batch)] == ["partial"] * 3
    final = core.process([], NOW, final=True)  # end of input: nothing stays buffered
    assert len(final.bodies) == 2 and final.pending == 0


@pytest.mark.parametrize(
    ("record", "reason", "field"),
    [
        (rec(0, "d1", 1, ts=NOW + 301_000), "future_timestamp", "ts"),
        (rec(0, "d1", 1, signals={"Vehicle.Speed": {"value": 5}}), "schema_error", "signals.Vehicle.Speed"),
        (Record("telemetry", 0, 0, b"k", b"x" * 2000, None), "too_large", None),
        (Record("telemetry", 0, 0, b"k", b'{"device_id": "d1"', None), "not_json", None),
    ],
)
def test_bad_events_are_dead_lettered_with_evidence(record: Record, reason: str, field: str | None) -> None:
    snap = Snap()
    snap.car(1, "d1")
    core = JoinCore(snap, JoinConfig(max_event_bytes=1000))
    batch = core.process([record, rec(1, "d1", 2)], NOW)
    assert len(batch.dead) == 1 and len(batch.bodies) == 1
    letter = orjson.loads(batch.dead[0][1])
    assert (letter["reason"], letter["field_path"], letter["stage"]) == (reason, field, "telemetry.decode")
    assert letter["source"]["offset"] == 0 and letter["source"]["partition"] == 0
    assert batch.progress == NOW  # a dead-lettered event never counts as event-time progress
    assert batch.dead_reasons == {reason: 1}


def test_event_age_horizon() -> None:
    snap = Snap()
    snap.car(1, "d1")
    core = JoinCore(snap, JoinConfig(max_age_ms=3_600_000))
    batch = core.process([rec(0, "d1", 1, ts=NOW - 7_200_000), rec(1, "d1", 2, ts=NOW - 60_000)], NOW)
    assert [orjson.loads(v)["reason"] for _k, v in batch.dead] == ["too_old"]
    assert batch.progress == NOW - 60_000


def test_nested_known_signals_are_leaves() -> None:
    nested = {
        "Vehicle": {"Speed": 3, "Cabin": {"HVAC": {"AmbientAirTemperature": "21.5"}}, "Custom": {"A": 1}}
    }
    tel = decode_telemetry(orjson.dumps({"device_id": "d", "ts": 1, "seq": 0, "signals": nested}))
    assert tel.signals == {
        "Vehicle.Speed": 3,
        "Vehicle.Cabin.HVAC.AmbientAirTemperature": 21.5,
        "Vehicle.Custom.A": 1,
    }
