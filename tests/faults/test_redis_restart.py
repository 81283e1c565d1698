"""Redis restarts under the stores and the outbox (a private Redis, kill -9 and restart): calls wait and then
complete, Lua scripts reload themselves (NOSCRIPT), the outage is logged and counted once."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from alerts.outbox import Job, Outbox
from connectors.health import monitor
from enrich.cdc import Change
from enrich.tables import DEFAULT_MODEL
from stack.procs import wait_until
from stores.redis_client import redis_client
from stores.redis_snapshot import RedisSnapshotStore
from stores.snapshot_cache import CachedSnapshot
from tests.faults.conftest import PrivateStack

pytestmark = pytest.mark.integration


def outages() -> float:
    value = REGISTRY.get_sample_value("enrich_dependency_outages_total", {"dependency": "redis"})
    return value or 0.0


def test_a_call_made_while_redis_is_down_completes_when_it_returns(
    private_stack: PrivateStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enrich.health")
    s = private_stack.settings(tmp_path)
    client = redis_client(s)
    key = f"{s.state_prefix}probe"
    client.set(key, b"1")
    before = outages()
    private_stack.redis.kill()
    done = threading.Event()

    def incr() -> None:
        client.incr(key)
        done.set()

    thread = threading.Thread(target=incr, daemon=True)
    thread.start()
    health = monitor("redis")
    assert wait_until(lambda: not health.up, 30)  # the worker thread is waiting, not failing
    assert not done.is_set()
    private_stack.redis.start()
    assert done.wait(60)
    assert client.get(key) == b"2"  # the increment happened exactly once
    assert health.up and outages() == before + 1
    assert "redis unreachable" in caplog.text and "redis reachable again" in caplog.text


def test_snapshot_store_and_outbox_scripts_survive_a_restart(
    private_stack: PrivateStack, tmp_path: Path
) -> None:
    s = private_stack.settings(tmp_path)
    store = RedisSnapshotStore.from_settings(s, redis_client(s), DEFAULT_MODEL)
    cache = CachedSnapshot(store)
    outbox = Outbox(redis_client(s), s.alerts_prefix)
    store.apply([
        Change("carinfo", "7", "upsert", {"car_id": 7, "fleet": "busan"}, "L1", 1),
        Change("deviceinfo", "d7", "upsert", {"device_id": "d7", "car_id": 7}, "L2", 2),
    ])  # fmt: skip
    assert cache.lookup(["d7"])["d7"].latest.rows["car"] == {"car_id": 7, "fleet": "busan"}
    assert outbox.enqueue(Job("m1", "ops", "webhook", {"body": "{}"}, ["i1"]))
    private_stack.redis.restart(hard=True)  # the script cache is empty afterwards: NOSCRIPT on next use
    store.apply([Change("carinfo", "7", "upsert", {"car_id": 7, "fleet": "seoul"}, "L3", 3)])
    assert cache.lookup(["d7"])["d7"].latest.rows["car"] == {"car_id": 7, "fleet": "seoul"}
    assert not outbox.enqueue(Job("m1", "ops", "webhook", {"body": "{}"}, ["i1"]))  # still known (AOF)
    assert outbox.enqueue(Job("m2", "ops", "webhook", {"body": "{}"}, ["i2"]))
    assert [j.id for j in outbox.due("ops", 2e12)] == ["m1", "m2"]
