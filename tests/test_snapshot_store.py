"""Snapshot store semantics, run against the in-memory twin (unit) and Redis (integration) alike."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from enrich.cdc import Change
from enrich.snapshot import InMemorySnapshotStore, SnapshotStore
from enrich.tables import DEFAULT_TABLES


def pos(n: int) -> str:
    return f"L{n:020d}"


def up(table: str, pk: Any, n: int, **cols: Any) -> Change:
    key = DEFAULT_TABLES[table].primary_key
    return Change(table, str(pk), "upsert", {key: pk, **cols}, pos(n), 1000 + n)


def delete(table: str, pk: Any, n: int, **cols: Any) -> Change:
    key = DEFAULT_TABLES[table].primary_key
    return Change(table, str(pk), "delete", {key: pk, **cols}, pos(n), 1000 + n)


def truncate(table: str, n: int) -> Change:
    return Change(table, "", "truncate", None, pos(n), 1000 + n)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> Iterator[SnapshotStore]:
    if request.param == "memory":
        yield InMemorySnapshotStore(DEFAULT_TABLES)
        return
    import redis

    from stores.redis_snapshot import RedisSnapshotStore

    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    prefix = f"test:{uuid.uuid4().hex[:8]}:snap:"
    yield RedisSnapshotStore(client, DEFAULT_TABLES, prefix=prefix, tombstone_ttl_s=60, chunk=7)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


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
    # Within one batch, the order of arrival does not matter either.
    store.apply([up("carinfo", 3, 30, status="C"), up("carinfo", 3, 20, status="B")])
    got = store.get("carinfo", "3")
    assert got is not None and got.row is not None and got.row["status"] == "C"


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
    merged = store.lookup("deviceinfo", ["d7", "lonely", "unknown"])
    d7 = merged["d7"]
    assert d7.get("deviceinfo") == {"device_id": "d7", "car_id": 7}
    assert d7.get("carinfo") == {"car_id": 7, "fleet": "busan"}
    assert d7.get("reservation") == {
        "reservation_id": 71, "car_id": 7, "status": "ACTIVE", "customer_email": "a@example.com"
    }  # fmt: skip
    assert d7.positions == {"deviceinfo": pos(2), "carinfo": pos(1), "reservation": pos(4)}
    assert merged["lonely"].get("carinfo") is None and merged["lonely"].get("reservation") is None
    assert merged["unknown"].get("deviceinfo") is None
    # The reservation ends: no active reservation any more.
    store.apply([up("reservation", 71, 6, car_id=7, status="ENDED")])
    assert store.lookup("deviceinfo", ["d7"])["d7"].get("reservation") is None
    # A device swap moves the device to another car.
    store.apply([up("carinfo", 8, 7, fleet="seoul"), up("deviceinfo", "d7", 8, car_id=8)])
    assert store.lookup("deviceinfo", ["d7"])["d7"].get("carinfo") == {"car_id": 8, "fleet": "seoul"}


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
