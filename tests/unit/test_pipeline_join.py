"""The join core (enrich.pipeline.join) on the in-memory snapshot twin: no Kafka, no Redis."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import orjson
import pytest

from enrich.asof import Timeline
from enrich.cdc import Change, ChangeOp
from enrich.pipeline.encode import enriched_event
from enrich.pipeline.join import JoinConfig, JoinCore
from enrich.records import Record
from enrich.snapshot import InMemorySnapshotStore
from enrich.tables import DEFAULT_MODEL
from enrich.telemetry import decode_telemetry

NOW = 1_790_000_000_000


class Snap:
    """The in-memory snapshot store behind the ``Lookup`` port, counting calls."""

    def __init__(self) -> None:
        self.store = InMemorySnapshotStore(DEFAULT_MODEL)
        self.calls = 0
        self.pos = 0

    def __call__(self, device_ids: Collection[str]) -> Mapping[str, Timeline | None]:
        self.calls += 1
        return self.store.lookup(device_ids)

    def put(self, table: str, pk: str, row: dict[str, Any] | None, at: int = 1) -> None:
        self.pos += 1
        op: ChangeOp = "upsert" if row is not None else "delete"
        self.store.apply([Change(table, pk, op, row, f"L{self.pos:05d}", at)])

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
    timeline = snap(["d7"])["d7"]
    assert timeline is not None
    expected = enriched_event(tel, timeline.at(tel.ts), DEFAULT_MODEL, ingested_at=NOW)
    assert first == expected and list(first) == list(expected)  # same fields, same order
    assert first["signals"] == {"Vehicle.Speed": 12.5}
    assert first["reservation"]["customer_email"] == "a@b.c" and first["car"]["model"] == "Kia Ray"
    assert batch.keys == [b"7", b"7"] and [r.offset for r in batch.sources] == [0, 1]
    assert batch.progress == NOW and list(batch.cars) == [7] and len(batch.cars[7].events) == 2
    assert batch.history.event_ids == ["d7:1", "d7:2"] and batch.history.bodies is batch.bodies


def test_missing_rows_wait_then_join_or_leave_as_missing() -> None:
    snap = Snap()
    core = JoinCore(snap, JoinConfig(max_wait_ms=1000))
    first = core.process([rec(0, "late", 1), rec(1, "ghost", 1), rec(2, "late", 2)], NOW)
    assert first.bodies == [] and first.pending == 3 and core.has_pending
    snap.car(1, "late")
    second = core.process([rec(3, "late", 3)], NOW + 200)
    out = docs(second)
    # late's events leave in order, with the attempts they took beside them; ghost keeps waiting
    assert [(d["device_id"], d["seq"]) for d in out] == [("late", 1), ("late", 2), ("late", 3)]
    assert second.attempts == {0: 1, 1: 1}
    assert all(d["enrichment"]["status"] == "ok" for d in out) and second.retried == 2
    third = core.process([], NOW + 1000)
    assert [(d["device_id"], d["enrichment"]["status"], d["car_id"]) for d in docs(third)] == [
        ("ghost", "missing", None)
    ]
    assert third.misses == {"missing": 1} and not core.has_pending
    assert third.keys == [b"ghost"]  # no car: keyed by device


def test_time_blocked_on_an_unreachable_store_does_not_count_against_the_wait() -> None:
    """A store outage blocks the lookup (the flow's client retries until Redis is back): when it returns,
    the rows the snapshot flow could not write meanwhile still get the whole ``max_wait_ms``."""
    snap = Snap()
    clock = {"now": 0.0, "outage": 0.0}

    def blocking(device_ids: Collection[str]) -> Mapping[str, Timeline | None]:
        clock["now"] += clock["outage"]  # the lookup returns when the store is back
        return snap(device_ids)

    core = JoinCore(blocking, JoinConfig(max_wait_ms=1000), wall=lambda: clock["now"])
    assert core.process([rec(0, "new", 1)], NOW).pending == 1
    clock["outage"] = 0.4  # blocked 400 ms: a later batch at NOW + 900 really looks at NOW + 1300
    second = core.process([rec(1, "new", 2)], NOW + 900)
    assert second.bodies == [] and second.pending == 2  # not expired: 900 ms of waiting counted, not 1300
    clock["outage"] = 0.0
    snap.car(3, "new")
    third = core.process([], NOW + 1000)
    assert [(d["seq"], d["enrichment"]["status"]) for d in docs(third)] == [(1, "ok"), (2, "ok")]
    # an ordinary round trip counts: without an outage the same wait expires
    core2 = JoinCore(snap, JoinConfig(max_wait_ms=1000))
    core2.process([rec(0, "gone", 1)], NOW)
    assert [d["enrichment"]["status"] for d in docs(core2.process([], NOW + 1000))] == ["missing"]


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


def test_events_join_the_rows_of_their_own_time() -> None:
    """A reservation change and a device swap: events at t1 < change < t2 get the rows of t1 and t2, also
    when t1's event is processed after the change, and a replay gives the same bytes."""
    snap = Snap()
    snap.car(7, "old")
    snap.put("reservation", "r1", {"reservation_id": "r1", "car_id": 7, "status": "ACTIVE",
                                   "customer_email": "ann@x"}, at=NOW - 50_000)  # fmt: skip
    snap.put("reservation", "r1", {"reservation_id": "r1", "car_id": 7, "status": "ENDED",
                                   "customer_email": "ann@x"}, at=NOW - 10_000)  # fmt: skip
    snap.put("reservation", "r2", {"reservation_id": "r2", "car_id": 7, "status": "ACTIVE",
                                   "customer_email": "bob@x"}, at=NOW - 5_000)  # fmt: skip
    snap.put("deviceinfo", "old", None, at=NOW - 7_000)  # swapped out at t = -7 s ...
    snap.put("deviceinfo", "new", {"device_id": "new", "car_id": 7}, at=NOW - 7_000)  # ... for this one
    records = [rec(0, "new", 1, ts=NOW - 1_000), rec(1, "old", 9, ts=NOW - 30_000),  # t1's event comes late
               rec(2, "old", 10, ts=NOW - 8_000)]  # fmt: skip
    batch = JoinCore(snap).process(records, NOW)
    got = [(d["device_id"], d["car_id"], d["enrichment"]["status"],
            (d["reservation"] or {}).get("customer_email")) for d in docs(batch)]  # fmt: skip
    assert got == [("new", 7, "ok", "bob@x"), ("old", 7, "ok", "ann@x"), ("old", 7, "ok", None)]
    # Rules see each event with the rows of its time, too.
    assert [c[1]["reservation"] for c in batch.cars[7].rows()] == [
        docs(batch)[0]["reservation"], docs(batch)[1]["reservation"], None
    ]  # fmt: skip
    # A replay from the beginning (a fresh core, the same records) gives byte-identical events.
    assert JoinCore(snap).process(records, NOW + 3_600_000).bodies == batch.bodies


def test_the_join_says_how_many_devices_the_car_has() -> None:
    snap = Snap()
    snap.car(7, "a")
    snap.put("deviceinfo", "b", {"device_id": "b", "car_id": 7}, at=NOW - 1_000)
    batch = JoinCore(snap).process([rec(0, "a", 1, ts=NOW - 2_000)], NOW)
    assert batch.cars[7].devices == 1 and not batch.cars[7].multi
    batch = JoinCore(snap).process([rec(0, "a", 1, ts=NOW - 2_000), rec(1, "a", 2, ts=NOW)], NOW)
    assert batch.cars[7].devices == 2 and batch.cars[7].multi
