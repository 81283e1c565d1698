"""The per-process timeline cache (stores/snapshot_cache.py) on Redis and Redis Cluster: hits need no round
trip, the change feed invalidates exactly the timelines a change can alter, misses are never cached."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from enrich.cdc import Change
from enrich.tables import DEFAULT_MODEL
from stores.redis_snapshot import RedisSnapshotStore
from stores.snapshot_cache import CachedSnapshot
from tests.conftest import sync_client

pytestmark = pytest.mark.integration
T0 = 1_700_000_000_000


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisSnapshotStore]:
    if request.param == "redis":
        client: Any = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    else:
        client = sync_client(request.getfixturevalue("redis_cluster_url"))
    prefix = f"test:{uuid.uuid4().hex[:8]}:snap:"
    yield RedisSnapshotStore(client, DEFAULT_MODEL, prefix=prefix)
    for key in list(client.scan_iter(match=f"{prefix}*", count=1000)):
        client.delete(key)


class Feed:
    def __init__(self, store: RedisSnapshotStore) -> None:
        self.store = store
        self.n = 0

    def up(self, table: str, pk: Any, at: int = 0, **cols: Any) -> None:
        self.n += 1
        key = DEFAULT_MODEL.tables[table].primary_key
        self.store.apply(
            [Change(table, str(pk), "upsert", {key: pk, **cols}, f"L{self.n:020d}", T0 + at, at == 0)]
        )


def test_the_change_feed_invalidates_exactly_what_a_change_alters(store: RedisSnapshotStore) -> None:
    feed = Feed(store)
    for car in (7, 8):
        feed.up("carinfo", car, fleet="busan")
        feed.up("deviceinfo", f"d{car}", car_id=car)
    feed.up("deviceinfo", "d7b", car_id=7)
    cache = CachedSnapshot(store)
    first = cache.lookup(["d7", "d7b", "d8"])
    assert first["d7"].latest.devices == 2 and cache.misses == 3
    assert cache.lookup(["d7", "d8"]) == {"d7": first["d7"], "d8": first["d8"]} and cache.hits == 2

    feed.up("reservation", "r1", at=1000, car_id=7, status="ACTIVE")  # a child of car 7
    again = cache.lookup(["d7", "d7b", "d8"])
    assert again["d8"] is first["d8"]  # car 8's timeline is untouched
    assert again["d7"] is not first["d7"] and again["d7"].latest.get("reservation") is not None
    assert again["d7b"].latest.get("reservation") is not None

    feed.up("deviceinfo", "d7b", at=2000, car_id=8)  # a device moves: both cars' device counts change
    moved = cache.lookup(["d7", "d8"])
    assert moved["d7"].latest.devices == 1 and moved["d8"].latest.devices == 2
    assert moved["d7"].at(T0 + 1500).devices == 2  # as of before the move

    feed.up("carinfo", 8, at=3000, fleet="seoul")
    after = cache.lookup(["d7", "d8"])
    assert after["d7"] is moved["d7"] and after["d8"].latest.get("car") == {"car_id": 8, "fleet": "seoul"}


def test_misses_are_not_cached_and_a_truncate_clears(store: RedisSnapshotStore) -> None:
    feed = Feed(store)
    cache = CachedSnapshot(store)
    assert cache.lookup(["ghost"])["ghost"].latest.get("device") is None
    assert cache.lookup(["ghost"])["ghost"].latest.get("device") is None and cache.misses == 2
    feed.up("carinfo", 1)
    feed.up("deviceinfo", "ghost", car_id=1)
    assert cache.lookup(["ghost"])["ghost"].latest.get("car") == {"car_id": 1}
    assert cache.lookup(["ghost"]) and cache.hits == 1
    store.apply([Change("carinfo", "", "truncate", None, "L99999999999999999999", T0 + 5000)])
    line = cache.lookup(["ghost"])["ghost"]
    assert cache.misses == 4 and line.latest.get("car") is None and line.at(T0).get("car") == {"car_id": 1}
