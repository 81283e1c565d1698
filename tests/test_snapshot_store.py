"""Snapshot store semantics, run against the in-memory twin (unit), Redis (integration) and Redis Cluster
(integration, the ``redis_cluster_url`` fixture: ``ENRICH_REDIS_CLUSTER_URL``) alike."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from enrich.cdc import Change
from enrich.snapshot import InMemorySnapshotStore, SnapshotStore
from enrich.tables import DEFAULT_MODEL, JoinModel
from tests.conftest import sync_client
from tests.tables_alt import alt_model

T0 = 1_700_000_000_000


def pos(n: int) -> str:
    return f"L{n:020d}"


def change(
    model: JoinModel, table: str, op: Any, pk: Any, n: int, at: int | None, load: bool, cols: Any
) -> Change:
    key = model.tables[table].primary_key
    return Change(table, str(pk), op, {key: pk, **cols}, pos(n), T0 + n if at is None else at, load)


def up(table: str, pk: Any, n: int, *, at: int | None = None, load: bool = False, **cols: Any) -> Change:
    return change(DEFAULT_MODEL, table, "upsert", pk, n, at, load, cols)


def delete(table: str, pk: Any, n: int, *, at: int | None = None, **cols: Any) -> Change:
    return change(DEFAULT_MODEL, table, "delete", pk, n, at, False, cols)


def truncate(table: str, n: int, *, at: int | None = None) -> Change:
    return Change(table, "", "truncate", None, pos(n), T0 + n if at is None else at)


def make_store(request: pytest.FixtureRequest, model: JoinModel, **kw: Any) -> Iterator[SnapshotStore]:
    kind = request.param
    if kind == "memory":
        yield InMemorySnapshotStore(model, **kw)
        return
    import redis

    from stores.redis_snapshot import RedisSnapshotStore

    if kind == "redis":
        client: Any = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    else:
        client = sync_client(request.getfixturevalue("redis_cluster_url"))
    prefix = f"test:{uuid.uuid4().hex[:8]}:snap:"
    yield RedisSnapshotStore(client, model, prefix=prefix, tombstone_ttl_s=60, chunk=7, **kw)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for key in keys:
        client.delete(key)


KINDS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.integration),
    pytest.param("cluster", marks=pytest.mark.integration),
]


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest) -> Iterator[SnapshotStore]:
    yield from make_store(request, DEFAULT_MODEL)


@pytest.fixture(params=KINDS)
def alt_store(request: pytest.FixtureRequest) -> Iterator[SnapshotStore]:
    yield from make_store(request, alt_model())


@pytest.fixture(params=KINDS)
def short_store(request: pytest.FixtureRequest) -> Iterator[SnapshotStore]:
    """A store that keeps 4 versions per row and one hour of history."""
    yield from make_store(request, DEFAULT_MODEL, max_versions=4, horizon_ms=3_600_000)


def test_insert_update_and_initial_load(store: SnapshotStore) -> None:
    res = store.apply([up("carinfo", 1, 1, status="ACTIVE"), up("carinfo", 2, 1, status="ACTIVE")])
    assert (res.applied, res.stale) == (2, 0)
    store.apply([up("carinfo", 1, 5, status="MAINTENANCE", model="Kia Ray")])
    got = store.get("carinfo", "1")
    assert got is not None and got.row == {"car_id": 1, "status": "MAINTENANCE", "model": "Kia Ray"}
    assert got.position == pos(5)
    assert store.rows("carinfo") == {
        "1": {"car_id": 1, "status": "MAINTENANCE", "model": "Kia Ray"},
        "2": {"car_id": 2, "status": "ACTIVE"},
    }


def test_duplicates_and_out_of_order_never_regress(store: SnapshotStore) -> None:
    store.apply([up("carinfo", 1, 10, status="NEW")])
    res = store.apply([up("carinfo", 1, 10, status="NEW"), up("carinfo", 1, 7, status="OLD")])
    assert (res.applied, res.stale) == (0, 2)
    got = store.get("carinfo", "1")
    assert got is not None and got.row == {"car_id": 1, "status": "NEW"}
    # Within one batch, the order of arrival does not matter either, and no version is lost.
    store.apply([up("carinfo", 3, 30, status="C"), up("carinfo", 3, 20, status="B")])
    got = store.get("carinfo", "3")
    assert got is not None and got.row is not None and got.row["status"] == "C"
    assert [v.row["status"] for v in store.history("carinfo", "3") if v.row] == ["B", "C"]


def test_delete_then_late_older_upsert_does_not_resurrect(store: SnapshotStore) -> None:
    store.apply([up("deviceinfo", "d1", 1, car_id=7), delete("deviceinfo", "d1", 5, car_id=7)])
    assert store.rows("deviceinfo") == {}
    tomb = store.get("deviceinfo", "d1")
    assert tomb is not None and tomb.row is None and tomb.position == pos(5)  # the position tombstone
    res = store.apply([up("deviceinfo", "d1", 3, car_id=7)])
    assert res.stale == 1 and store.rows("deviceinfo") == {}
    store.apply([up("deviceinfo", "d1", 9, car_id=8)])  # a newer insert brings it back
    assert store.rows("deviceinfo") == {"d1": {"device_id": "d1", "car_id": 8}}


def test_truncate_clears_table_and_ignores_older_changes(store: SnapshotStore) -> None:
    store.apply([up("carinfo", i, i) for i in range(1, 6)] + [up("deviceinfo", "d", 1, car_id=1)])
    store.apply([truncate("carinfo", 10)])
    assert store.rows("carinfo") == {}
    assert store.rows("deviceinfo") == {"d": {"device_id": "d", "car_id": 1}}  # other tables untouched
    store.apply([up("carinfo", 2, 8), up("carinfo", 3, 11)])
    assert store.rows("carinfo") == {"3": {"car_id": 3}}
    # As of a time before the truncate, the car was there.
    timeline = store.lookup(["d"])["d"]
    assert timeline.at(T0 + 5).get("car") == {"car_id": 1}
    assert timeline.at(T0 + 10).get("car") is None


def test_lookup_merges_device_car_and_active_reservation(store: SnapshotStore) -> None:
    store.apply(
        [
            up("carinfo", 7, 1, fleet="busan"),
            up("deviceinfo", "d7", 2, car_id=7),
            up("reservation", 70, 3, car_id=7, status="ENDED"),
            up("reservation", 71, 4, car_id=7, status="ACTIVE", customer_email="a@example.com"),
            up("deviceinfo", "lonely", 5, car_id=999),
        ]
    )
    merged = {pk: t.latest for pk, t in store.lookup(["d7", "lonely", "unknown"]).items()}
    d7 = merged["d7"]
    assert d7.get("device") == {"device_id": "d7", "car_id": 7}
    assert d7.get("car") == {"car_id": 7, "fleet": "busan"}
    assert d7.get("reservation") == {
        "reservation_id": 71, "car_id": 7, "status": "ACTIVE", "customer_email": "a@example.com"
    }  # fmt: skip
    assert d7.positions == {"device": pos(2), "car": pos(1), "reservation": pos(4)}
    assert d7.devices == 1 and not d7.multi
    assert merged["lonely"].get("car") is None and merged["lonely"].get("reservation") is None
    assert merged["unknown"].get("device") is None
    # The reservation ends: no active reservation any more (from the end's commit time on).
    store.apply([up("reservation", 71, 6, car_id=7, status="ENDED")])
    timeline = store.lookup(["d7"])["d7"]
    assert timeline.latest.get("reservation") is None
    assert timeline.at(T0 + 5).get("reservation") is not None  # before the end, it was running
    # A device swap moves the device to another car.
    store.apply([up("carinfo", 8, 7, fleet="seoul"), up("deviceinfo", "d7", 8, car_id=8)])
    timeline = store.lookup(["d7"])["d7"]
    assert timeline.latest.get("car") == {"car_id": 8, "fleet": "seoul"}
    assert timeline.at(T0 + 7).get("car") == {"car_id": 7, "fleet": "busan"}


def test_reservations_join_as_of_event_time(store: SnapshotStore) -> None:
    """An event at t1 gets the reservation running at t1, even when processed after it changed."""
    store.apply([up("carinfo", 7, 1, load=True), up("deviceinfo", "d7", 2, car_id=7, load=True)])
    store.apply([up("reservation", "r1", 3, at=T0 + 100, car_id=7, status="ACTIVE", customer_email="ann@x")])
    store.apply([up("reservation", "r1", 4, at=T0 + 200, car_id=7, status="ENDED", customer_email="ann@x")])
    store.apply([up("reservation", "r2", 5, at=T0 + 300, car_id=7, status="ACTIVE", customer_email="bob@x")])
    timeline = store.lookup(["d7"])["d7"]
    email = {t: (m.get("reservation") or {}).get("customer_email") for t in (50, 150, 250, 350)
             for m in [timeline.at(T0 + t)]}  # fmt: skip
    assert email == {50: None, 150: "ann@x", 250: None, 350: "bob@x"}
    # Rows from the initial load are valid from the beginning of time, whatever their commit time.
    assert timeline.at(0).get("car") == {"car_id": 7} and timeline.at(0).get("device") is not None


def test_device_swap_joins_each_event_with_the_car_of_its_moment(store: SnapshotStore) -> None:
    store.apply([up("carinfo", 7, 1, load=True), up("deviceinfo", "old", 2, car_id=7, load=True)])
    store.apply([delete("deviceinfo", "old", 3, at=T0 + 700, car_id=7),
                 up("deviceinfo", "new", 4, at=T0 + 700, car_id=7)])  # fmt: skip
    lines = store.lookup(["old", "new"])
    assert lines["old"].at(T0 + 500).get("car") == {"car_id": 7}  # 10:05, processed after the 10:07 swap
    assert lines["old"].at(T0 + 800).get("device") is None
    assert lines["new"].at(T0 + 800).get("car") == {"car_id": 7}
    # A device that reports a little before its row's commit time still joins (its first version).
    assert lines["new"].at(T0 + 690).get("car") == {"car_id": 7}


def test_device_count_of_the_car_as_of_event_time(store: SnapshotStore) -> None:
    store.apply([up("carinfo", 7, 1, load=True), up("deviceinfo", "a", 2, car_id=7, load=True)])
    store.apply([up("deviceinfo", "b", 3, at=T0 + 500, car_id=7)])
    store.apply([up("deviceinfo", "b", 4, at=T0 + 900, car_id=8)])  # b moves to another car
    a = store.lookup(["a"])["a"]
    assert [a.at(T0 + t).devices for t in (100, 600, 1000)] == [1, 2, 1]
    assert a.at(T0 + 600).multi
    b = store.lookup(["b"])["b"]
    assert b.at(T0 + 600).devices == 2 and b.at(T0 + 1000).devices == 1


def test_bounded_history(short_store: SnapshotStore) -> None:
    """At most max_versions versions per row; versions no time within the horizon needs are dropped."""
    store = short_store
    store.apply([up("carinfo", 1, n, at=T0 + n * 1000, rev=n) for n in range(1, 11)])
    assert [v.row["rev"] for v in store.history("carinfo", "1") if v.row] == [7, 8, 9, 10]
    store.apply([up("carinfo", 1, 20, at=T0 + 10 * 3_600_000, rev=20)])  # ten hours later
    assert [v.row["rev"] for v in store.history("carinfo", "1") if v.row] == [10, 20]  # 10 holds until 20
    # A car's index forgets children that cannot be chosen within the horizon.
    store.apply([up("deviceinfo", "d", 21, at=T0, car_id=1, load=True),
                 up("reservation", "old", 22, at=T0 + 1000, car_id=1, status="ENDED")])  # fmt: skip
    store.apply([up("reservation", "new", 23, at=T0 + 5 * 3_600_000, car_id=1, status="ACTIVE")])
    store.apply([up("reservation", "new", 24, at=T0 + 6 * 3_600_000, car_id=1, status="ENDED")])
    twin = isinstance(store, InMemorySnapshotStore)
    gathered = store.gather("d") if twin else store.gather(["d"])["d"]  # type: ignore[attr-defined]
    assert set(gathered.children["1"]["reservation"]) == {"new"}


def test_random_redelivery_converges_to_the_source(store: SnapshotStore) -> None:
    """Changes applied in shuffled order with duplicates end where position order ends."""
    rng = random.Random(11)
    changes: list[Change] = []
    for n in range(1, 1500):
        car = rng.randrange(40)
        if rng.random() < 0.15:
            changes.append(delete("carinfo", car, n))
        else:
            changes.append(up("carinfo", car, n, status=rng.choice(["ACTIVE", "MAINTENANCE"]), version=n))
    truth: dict[str, dict[str, Any]] = {}
    for ch in changes:
        if ch.op == "upsert" and ch.row is not None:
            truth[ch.pk] = ch.row
        else:
            truth.pop(ch.pk, None)
    redelivered = changes + rng.sample(changes, 500)
    rng.shuffle(redelivered)
    for i in range(0, len(redelivered), 97):
        store.apply(redelivered[i : i + 97])
    assert store.rows("carinfo") == truth


def alt(table: str, op: Any, pk: Any, n: int, at: int, **cols: Any) -> Change:
    return change(alt_model(), table, op, pk, n, at, False, cols)


def test_another_shape_interval_and_latest_children(alt_store: SnapshotStore) -> None:
    """Other table and column names; bookings chosen by their validity interval (no status column); the
    newest insurance policy."""
    store = alt_store
    hour = 3_600_000
    store.apply([
        alt("vehicles", "upsert", 5, 1, T0, plate="X"),
        alt("trackers", "upsert", "imei-1", 2, T0, vehicle_no=5),
        alt("bookings", "upsert", "b1", 3, T0, vehicle_no=5, starts_at=T0 + hour, ends_at=T0 + 2 * hour,
            customer_email="ann@x"),
        alt("bookings", "upsert", "b2", 4, T0, vehicle_no=5, starts_at=T0 + 3 * hour, ends_at=None,
            customer_email="bob@x"),
        alt("insurance_policies", "upsert", "p1", 5, T0, vehicle_no=5, coverage="basic"),
    ])  # fmt: skip
    store.apply(
        [alt("insurance_policies", "upsert", "p2", 6, T0 + 90 * 60_000, vehicle_no=5, coverage="full")]
    )
    line = store.lookup(["imei-1"])["imei-1"]

    def at(minutes: int) -> tuple[Any, Any]:
        m = line.at(T0 + minutes * 60_000)
        return (m.get("booking") or {}).get("customer_email"), (m.get("insurance") or {}).get("policy_no")

    assert [at(m) for m in (30, 60, 100, 150, 200)] == [
        (None, "p1"), ("ann@x", "p1"), ("ann@x", "p2"), (None, "p2"), ("bob@x", "p2")
    ]  # fmt: skip
    assert line.latest.get("car") == {"vehicle_no": 5, "plate": "X"}
    assert line.latest.get("device") == {"imei": "imei-1", "vehicle_no": 5}


def test_a_moved_row_leaves_its_old_cars_index_once_its_history_there_is_gone(
    short_store: SnapshotStore,
) -> None:
    store = short_store
    hour = 3_600_000

    def devices_of_car_1() -> set[str]:
        twin = isinstance(store, InMemorySnapshotStore)
        g = store.gather("a") if twin else store.gather(["a"])["a"]  # type: ignore[attr-defined]
        return set(g.devices["1"]) | {"a"}

    store.apply([up("carinfo", 1, 1, load=True), up("carinfo", 2, 2, load=True)])
    store.apply([up("deviceinfo", d, n, car_id=1, load=True) for n, d in ((3, "a"), (4, "m"))])
    store.apply([up("deviceinfo", "m", 5, at=T0 + 1000, car_id=2)])  # m moves to car 2
    assert devices_of_car_1() == {"a", "m"}  # m was car 1's until then: a's timeline needs it
    assert store.lookup(["a"])["a"].at(T0).devices == 2
    store.apply([up("deviceinfo", "m", 6, at=T0 + 3 * hour, car_id=2, rev=1)])  # m's car-1 history ages out
    devices_of_car_1()  # the lookup finds m no longer pointing at car 1 anywhere in its history ...
    assert devices_of_car_1() == {"a"}  # ... and drops it from car 1's index
    assert store.lookup(["a"])["a"].latest.devices == 1
