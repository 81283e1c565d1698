"""The vehicle store on Redis and its in-memory twin: the same behaviour, checked by the same tests."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pytest

from stores.vehicles import VehicleReader, VehicleStateWrite, VehicleWriter
from stores.vehicles.memory import MemoryVehicleStore
from stores.vehicles.model import BBox, IncidentQuery, VehicleQuery, class_id, tags_of

T = TypeVar("T")
FLEETS = ("seoul", "busan", "incheon")
MODELS = ("Kia Ray", "Kia Niro EV", "Tesla Model 3")


_runner: list[asyncio.Runner] = []


@pytest.fixture(autouse=True)
def _loop() -> Iterator[None]:
    """One event loop per test (the async Redis client's connections belong to it)."""
    with asyncio.Runner() as runner:
        _runner.append(runner)
        yield
        _runner.clear()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return _runner[0].run(coro)


def car_row(car: int, **over: Any) -> dict[str, Any]:
    row = {
        "car_id": car,
        "fleet": FLEETS[car % 3],
        "model": MODELS[car % len(MODELS)],
        "status": "MAINTENANCE" if car % 10 == 0 else "ACTIVE",
        "environment": "beta" if car % 4 == 0 else "prod",
        "stage": "prod" if car % 4 != 0 or car % 8 == 0 else "pilot",
    }
    row.update(over)
    return row


def state(
    car: int, version: int = 1, last_seen: int = 1_000, loc: tuple[float, float] | None = None, **row: Any
) -> dict[str, Any]:
    lat, lon = loc if loc is not None else (37.0 + (car % 50) / 100, 127.0 + (car % 30) / 100)
    return {
        "car_id": car,
        "last_seen": last_seen,
        "location": {"lat": lat, "lon": lon},
        "signals": {},
        "car": car_row(car, **row),
        "reservation": None,
        "devices": [f"d{car}"],
        "updated_at": last_seen,
        "version": version,
    }


def writes(docs: list[dict[str, Any]], with_dict: bool = False) -> dict[int, VehicleStateWrite]:
    return {d["car_id"]: VehicleStateWrite(orjson.dumps(d), d if with_dict else None) for d in docs}


def outlier(iid: str, car: int, status: str, starts: int, rule: str = "headlights-left-on") -> dict[str, Any]:
    return {
        "incident_id": iid,
        "fingerprint": "ab",
        "rule_id": rule,
        "status": status,
        "severity": "warning",
        "car_id": car,
        "device_id": None,
        "labels": {},
        "annotations": {},
        "starts_at": starts,
        "ends_at": starts + 5 if status == "resolved" else None,
        "generated_at": starts,
        "snapshot": {"car": car_row(car), "reservation": None, "signals": {}},
    }


@dataclass
class Store:
    writer: VehicleWriter
    reader: VehicleReader
    fresh_writer: Callable[[], VehicleWriter]  # another process's writer (empty caches)


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest, unique: Callable[[str], str]) -> Iterator[Store]:
    """The in-memory twin, Redis (one instance) and a Redis Cluster of three masters."""
    if request.param == "memory":
        mem = MemoryVehicleStore()
        yield Store(mem, mem, lambda: mem)
        return
    from stores.vehicles.redis_reader import RedisVehicleReader
    from stores.vehicles.redis_writer import RedisVehicleWriter
    from tests.conftest import async_client, delete_prefix, sync_client

    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    prefix = unique("state:")
    sync = sync_client(url)
    reader = RedisVehicleReader(async_client(url), prefix, classes_ttl_s=0)
    yield Store(RedisVehicleWriter(sync, prefix), reader, lambda: RedisVehicleWriter(sync, prefix))
    delete_prefix(sync, prefix)


def all_pages(reader: VehicleReader, q: VehicleQuery, allowed: Any = None, limit: int = 7) -> list[int]:
    async def go() -> list[int]:
        out: list[int] = []
        after = None
        for _ in range(1000):
            page = await reader.list_vehicles(q, allowed, after, limit)
            assert len(page.items) <= limit
            out += [orjson.loads(d)["car_id"] for d in page.items]
            if page.next_after is None:
                return out
            after = page.next_after
        raise AssertionError("pagination did not end")

    return run(go())


def expected(docs: dict[int, dict[str, Any]], pred: Callable[[dict[str, Any]], bool]) -> list[int]:
    return sorted(c for c, d in docs.items() if pred(d))


def test_every_filter_matches_a_brute_force_filter(store: Store) -> None:
    rng = random.Random(7)
    docs = {c: state(c, last_seen=rng.randint(0, 10_000)) for c in range(1, 121)}
    store.writer.write_batch(writes(list(docs.values())[:60]))
    store.writer.write_batch(writes(list(docs.values())[60:], with_dict=True))
    store.writer.write_batch({}, [outlier("i1", 5, "firing", 100), outlier("i2", 9, "firing", 200)])
    r = store.reader
    assert all_pages(r, VehicleQuery()) == sorted(docs)
    for field in ("fleet", "model", "status", "environment"):
        value = docs[3]["car"][field]
        got = all_pages(r, VehicleQuery(equal={field: value}))
        assert got == sorted(c for c, d in docs.items() if d["car"][field] == value), field
    both = VehicleQuery(equal={"fleet": "busan", "model": "Kia Ray"})
    assert all_pages(r, both) == expected(
        docs, lambda d: (d["car"]["fleet"], d["car"]["model"]) == ("busan", "Kia Ray")
    )
    assert all_pages(r, VehicleQuery(has_active_incident=True)) == [5, 9]
    assert all_pages(r, VehicleQuery(has_active_incident=False)) == [
        c for c in sorted(docs) if c not in (5, 9)
    ]
    q = VehicleQuery(last_seen_after=3000, last_seen_before=7000)
    assert all_pages(r, q) == expected(docs, lambda d: 3000 < d["last_seen"] < 7000)
    box = BBox(37.1, 127.05, 37.3, 127.2)
    assert all_pages(r, VehicleQuery(bbox=box)) == expected(
        docs, lambda d: box.contains(d["location"]["lat"], d["location"]["lon"])
    )
    combo = VehicleQuery(
        equal={"status": "ACTIVE"}, last_seen_before=5000, bbox=BBox(37.0, 127.0, 37.4, 127.3)
    )
    assert all_pages(r, combo, limit=3) == expected(
        docs,
        lambda d: d["car"]["status"] == "ACTIVE" and d["last_seen"] < 5000 and d["location"]["lat"] <= 37.4,
    )


def test_lists_return_only_allowed_classes(store: Store) -> None:
    docs = {c: state(c) for c in range(1, 41)}
    store.writer.write_batch(writes(list(docs.values())))
    classes = run(store.reader.classes())
    beta = {cid for cid, tags in classes.items() if tags.get("environment") == "beta"}
    assert beta and len(beta) < len(classes)
    got = all_pages(store.reader, VehicleQuery(), allowed=beta)
    assert got == expected(docs, lambda d: d["car"]["environment"] == "beta")
    assert all_pages(store.reader, VehicleQuery(), allowed=set()) == []
    # a tag filter outside the allowed classes returns nothing (no counts, no ids)
    assert all_pages(store.reader, VehicleQuery(equal={"environment": "prod"}), allowed=beta) == []


def test_a_car_that_changes_class_moves_between_indexes(store: Store) -> None:
    store.writer.write_batch(writes([state(c) for c in range(1, 9)]))
    store.writer.write_batch(
        writes([state(4, version=2, environment="prod", fleet="busan", status="RETIRED")])
    )
    assert 4 not in all_pages(store.reader, VehicleQuery(equal={"environment": "beta"}))
    assert 4 in all_pages(store.reader, VehicleQuery(equal={"status": "RETIRED"}))
    # a writer with empty caches (another process, or after a restart) still moves old entries
    fresh = store.fresh_writer()
    fresh.write_batch(writes([state(4, version=3, status="ACTIVE", environment="beta")]))
    assert all_pages(store.reader, VehicleQuery(equal={"status": "RETIRED"})) == []
    assert 4 in all_pages(store.reader, VehicleQuery(equal={"environment": "beta"}))
    doc, incidents = run(store.reader.vehicle(4)) or (b"", [])
    assert orjson.loads(doc)["version"] == 3 and incidents == []
    assert run(store.reader.vehicle(404)) is None


def test_pagination_is_stable_while_states_are_rewritten(store: Store) -> None:
    store.writer.write_batch(writes([state(c) for c in range(1, 51)]))

    async def go() -> list[int]:
        out: list[int] = []
        after = None
        version = 2
        while True:
            page = await store.reader.list_vehicles(VehicleQuery(), None, after, 6)
            out += [orjson.loads(d)["car_id"] for d in page.items]
            # the flow keeps writing every car (new versions, new last_seen) between pages
            store.writer.write_batch(
                writes([state(c, version=version, last_seen=version) for c in range(1, 51)])
            )
            version += 1
            if page.next_after is None:
                return out
            after = page.next_after

    assert run(go()) == list(range(1, 51))  # each car exactly once, in id order


def test_incidents_records_indexes_and_replays(store: Store) -> None:
    store.writer.write_batch(writes([state(c) for c in (1, 2, 4)]))
    w = store.writer
    w.write_batch({}, [orjson.dumps(outlier("a", 1, "firing", 1000)), outlier("b", 2, "firing", 2000)])
    w.write_batch(
        {}, [outlier("c", 4, "firing", 3000, rule="low-12v-battery"), outlier("a", 1, "resolved", 1000)]
    )
    w.write_batch({}, [outlier("a", 1, "firing", 1000)])  # a replayed firing does not reopen it
    r = store.reader

    def ids(q: IncidentQuery, allowed: Any = None, limit: int = 2) -> list[str]:
        async def go() -> list[str]:
            out: list[str] = []
            after = None
            while True:
                page = await r.list_incidents(q, allowed, after, limit)
                out += [orjson.loads(x)["incident_id"] for x in page.items]
                if page.next_after is None:
                    return out
                after = page.next_after

        return run(go())

    assert ids(IncidentQuery()) == ["c", "b", "a"]  # newest first
    assert ids(IncidentQuery(status="firing")) == ["c", "b"]
    assert ids(IncidentQuery(status="resolved")) == ["a"]
    assert ids(IncidentQuery(rule_id="low-12v-battery")) == ["c"]
    assert ids(IncidentQuery(car_id=2)) == ["b"]
    assert ids(IncidentQuery(since=2000)) == ["c", "b"]
    assert ids(IncidentQuery(until=2000)) == ["a"]
    beta = {class_id(tags_of(car_row(4)))}
    assert ids(IncidentQuery(), allowed=beta) == ["c"]
    record = orjson.loads(run(r.incident("a")) or b"{}")
    assert record["status"] == "resolved" and record["tags"]["environment"] == "prod"
    assert all_pages(r, VehicleQuery(has_active_incident=True)) == [2, 4]
    _doc, active = run(r.vehicle(2)) or (b"", [])
    assert [orjson.loads(x)["incident_id"] for x in active] == ["b"]


def test_one_change_entry_per_batch(store: Store) -> None:
    first, last = run(store.reader.change_bounds())
    assert first is None and last is None
    store.writer.write_batch(writes([state(c, version=3) for c in (1, 2, 3)]))
    store.writer.write_batch({}, [outlier("x", 2, "firing", 10)])
    changes = run(store.reader.changes(None))
    assert len(changes) == 2
    assert [(c, v) for c, v, _cid in changes[0].states] == [(1, 3), (2, 3), (3, 3)]
    assert changes[1].incidents[0]["incident_id"] == "x" and changes[1].states == []
    assert run(store.reader.changes(changes[0].id)) == changes[1:]
    assert run(store.reader.changes(changes[1].id, block_ms=50)) == []


def test_recent_signal_series_is_bounded_sampled_and_replay_safe(store: Store) -> None:
    from stores.vehicles.model import SERIES_POINTS, SERIES_SIGNALS, SERIES_STEP_MS, parse_series

    def doc(i: int) -> dict[str, Any]:
        d = state(7, version=i, last_seen=1_000_000 + i * 10_000)
        d["signals"] = {
            "Vehicle.Speed": {"value": float(i), "ts": d["last_seen"], "seq": i, "device_id": "d7"},
            "Vehicle.LowVoltageBattery.CurrentVoltage": {"value": 12.5, "ts": 1, "seq": 1, "device_id": "d7"},
            "Vehicle.Body.Lights.Beam.Low.IsOn": {"value": True, "ts": 1, "seq": 1, "device_id": "d7"},
        }
        if i % 3 == 1:  # the flow's stored record: values and stamps maps instead of signal objects
            sig = d.pop("signals")
            d["values"] = {k: v["value"] for k, v in sig.items()}
            d["stamps"] = {k: [v["ts"], v["seq"], v["device_id"]] for k, v in sig.items()}
        return d

    n = 3 * SERIES_POINTS + 30  # 10 s of event time per batch: a sample every third batch
    for i in range(n):
        store.writer.write_batch(writes([doc(i)], with_dict=i % 2 == 0))
    # another process (a restart) samples the car's next state at once; replaying a sampled state is no
    # duplicate (one sample per event time)
    store.fresh_writer().write_batch(writes([doc(n - 3)]))
    store.fresh_writer().write_batch(writes([doc(n - 1)]))
    times, cols = parse_series(run(store.reader.series(7)), SERIES_SIGNALS)
    assert SERIES_POINTS - 2 <= len(times) <= SERIES_POINTS  # a replayed sample takes a slot
    t = [1_000_000 + (n - 3) * 10_000, 1_000_000 + (n - 1) * 10_000]
    assert times[-2:] == t or times[-1] == t[0]  # the memory twin is one process: no early sample
    steady = times if times[-1] == t[0] else times[:-1]
    assert all(b - a == SERIES_STEP_MS for a, b in itertools.pairwise(steady))
    assert cols["Vehicle.Speed"] == [(t - 1_000_000) / 10_000 for t in times]
    assert set(cols["Vehicle.LowVoltageBattery.CurrentVoltage"]) == {12.5}
    assert set(cols["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]) == {None}
    since = times[-10]
    assert parse_series(run(store.reader.series(7)), SERIES_SIGNALS, since)[0] == times[-10:]
    assert run(store.reader.series(8)) == []
    # the overview's summary, from either form of the document
    for i in (n - 2, n - 1):  # a stored record, then a vehicle-state.v1 document
        store.writer.write_batch(writes([doc(i)]))
        page = run(store.reader.list_vehicles(VehicleQuery(), None, None, 10, summary=True))
        summary = orjson.loads(page.items[0])
        assert (summary["car_id"], summary["speed"], summary["version"]) == (7, float(i), i)
        assert "signals" not in summary and summary["fleet"] == car_row(7)["fleet"]


def test_a_large_batch_lands_whole(store: Store) -> None:
    """3,000 cars in one batch (on a cluster: variadic index commands split into Lua-sized chunks, 64 document
    tags over three masters) — every car, its index entries and its geo position are there."""
    docs = [state(c, last_seen=c) for c in range(1, 3001)]
    store.writer.write_batch(writes(docs))
    assert all_pages(store.reader, VehicleQuery(), limit=1000) == list(range(1, 3001))
    seen = all_pages(store.reader, VehicleQuery(last_seen_after=2000), limit=500)
    assert seen == list(range(2001, 3001))
    box = BBox(37.0, 127.0, 37.05, 127.05)
    inside = expected(
        {d["car_id"]: d for d in docs}, lambda d: box.contains(d["location"]["lat"], d["location"]["lon"])
    )
    assert all_pages(store.reader, VehicleQuery(bbox=box), limit=1000) == inside
    assert len(run(store.reader.docs(list(range(1, 3001))))) == 3000
