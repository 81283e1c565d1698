"""The single-slot stores on one Redis instance, on a Redis Cluster and (where there is one) their in-memory
twin: API keys, and the alerts state (notification log, silences, the lease and the fenced outbox).
On a cluster every key of one store must carry the same hash tag, or its MULTIs and Lua scripts fail with
CROSSSLOT — these tests would."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from alerts.delivery import Attempt
from alerts.dispatch import InMemoryNotificationLog, LogEntry, NotificationLog
from alerts.lease import Lease, NotLeaderError
from alerts.outbox import Job, Outbox, RedisNotificationLog, alerts_keyspace
from alerts.worker import SilenceStore
from stores.apikeys import ApiKeyStore, MemoryApiKeyStore, RedisApiKeyStore, authenticate
from stores.redis_client import cluster_url, is_cluster
from tests.conftest import async_client, delete_prefix, sync_client


@pytest.fixture(params=["memory", "redis", "cluster"])
def keys_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], ApiKeyStore]]:
    """A factory (the async client must be made inside the test's event loop)."""
    if request.param == "memory":
        mem = MemoryApiKeyStore()
        yield lambda: mem
        return
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    prefix = f"t{uuid.uuid4().hex[:8]}:api:"
    yield lambda: RedisApiKeyStore(async_client(url), prefix)
    delete_prefix(sync_client(url), prefix)


def test_api_keys_create_authenticate_list_revoke_expire(keys_store: Callable[[], ApiKeyStore]) -> None:
    async def go() -> None:
        store = keys_store()
        key, token = await store.create("ops", {"fleet": "seoul"})
        short, short_token = await store.create("short", {}, expires_at=int(time.time() * 1000) + 60_000)
        assert (await authenticate(store, token)) == key
        assert await authenticate(store, token[:-2] + "xx") is None  # wrong secret
        assert {k.id for k in await store.list()} == {key.id, short.id}
        assert await store.revoke(key.id) and not await store.revoke("nope")
        assert await authenticate(store, token) is None
        assert await authenticate(store, short_token) is not None
        assert await authenticate(store, short_token, now_ms=int(time.time() * 1000) + 120_000) is None

    asyncio.run(go())


@pytest.fixture
def alerts_client(any_redis_url: str) -> Iterator[tuple[Any, str]]:
    client = sync_client(any_redis_url)
    prefix = f"t{uuid.uuid4().hex[:8]}:alerts:"
    yield client, prefix
    delete_prefix(client, prefix)


def test_alerts_keys_share_one_slot_on_a_cluster(alerts_client: tuple[Any, str]) -> None:
    client, prefix = alerts_client
    p = alerts_keyspace(prefix, client)
    if is_cluster(client):
        assert p == f"{prefix}{{alerts}}:"
        assert len({client.keyslot(f"{p}{name}") for name in ("job:1", "due:ops", "nlog", "leader")}) == 1
    else:
        assert p == prefix  # one instance: the names are unchanged


@pytest.fixture(params=["memory", "redis"])
def nlog(request: pytest.FixtureRequest, alerts_client: tuple[Any, str]) -> NotificationLog:
    if request.param == "memory":
        return InMemoryNotificationLog()
    client, prefix = alerts_client
    return RedisNotificationLog(client, prefix)


def test_notification_log_keeps_what_each_receiver_was_told(nlog: NotificationLog) -> None:
    assert nlog.last("g1", "ops") is None
    entry = LogEntry("d1", 1000, {"inc-1": ("firing", 1000), "inc-2": ("resolved", 900)})
    nlog.record("g1", "ops", entry)
    nlog.record("g1", "mail", LogEntry("d2", 1100))
    got = nlog.last("g1", "ops")
    assert got is not None and (got.digest, got.at, got.status("inc-1"), got.status("inc-2")) == (
        "d1", 1000, "firing", "resolved"
    )  # fmt: skip
    assert (nlog.last("g1", "mail") or LogEntry("", 0)).digest == "d2"


def test_silences_lease_and_fenced_outbox(alerts_client: tuple[Any, str]) -> None:
    client, prefix = alerts_client
    silences = SilenceStore(client, prefix)
    sid = silences.add(['car_id="7"'], 60_000, comment="tow", now_ms=1000)
    assert [(s.id, s.active(2000)) for s in silences.all()] == [(sid, True)]
    assert silences.expire(sid, now_ms=1500) and not silences.all()[0].active(2000)

    p = alerts_keyspace(prefix, client)
    a, b = Lease(client, p, 1000, name="a"), Lease(client, p, 1000, name="b")
    assert a.acquire() and not b.acquire()
    assert a.renew() and a.holder() == a.token
    outbox, log = Outbox(client, prefix), RedisNotificationLog(client, prefix)
    outbox.token = log.token = a.token
    job = Job("msg_1", "ops", "webhook", {"body": "{}"}, ["inc-1"])
    assert outbox.enqueue(job, now_s=0) and outbox.claim(job)
    log.record("g", "ops", LogEntry("d", 1))
    a.release()
    assert b.acquire() and not a.renew()  # a's term is over
    with pytest.raises(NotLeaderError):
        outbox.enqueue(Job("msg_2", "ops", "webhook", {}, []), now_s=0)
    with pytest.raises(NotLeaderError):
        log.record("g", "ops", LogEntry("late", 2))
    with pytest.raises(NotLeaderError):
        outbox.claim(job)
    assert outbox.settle(job, Attempt(True), 1.0, max_attempts=3, first_s=1, cap_s=1) == "delivered"
    outbox.token = b.token
    assert not outbox.enqueue(job, now_s=0)  # delivered already: never again
    assert (RedisNotificationLog(client, prefix).last("g", "ops") or LogEntry("", 0)).digest == "d"


def test_cluster_url_scheme() -> None:
    assert cluster_url("redis+cluster://10.0.0.5:7000") == "redis://10.0.0.5:7000"
    assert cluster_url("rediss+cluster://h:7000/0") == "rediss://h:7000"
    assert cluster_url("redis://127.0.0.1:6379/0") is None
