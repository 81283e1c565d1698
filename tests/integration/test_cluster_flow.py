"""The enrichment pipeline end to end on a Redis Cluster (three masters): simulator → snapshot flow →
enrichment flow with ``ENRICH_REDIS_URL=redis+cluster://…``; the vehicle store read back through the API's
reader on the cluster equals the newest signals of the enriched events, the incidents match the outliers
topic, and the documents are spread over the masters.

The snapshot store (another engineer's, being hash-tagged) must work on a cluster for the flows to run
there; until it does, the test reports xfail with the reason, found by a probe (a keyless Lua script lands
on a random master)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from stores.redis_client import redis_client
from stores.vehicles.layout import Keys
from stores.vehicles.model import IncidentQuery
from stores.vehicles.redis_reader import RedisVehicleReader
from tests.conftest import async_client, delete_prefix, sync_client
from tests.integration.pipeline import run_to_eof
from tests.kafka_util import consume_all

pytestmark = pytest.mark.integration


def snapshot_store_works_on(url: str) -> str | None:
    """None when the snapshot store's scripts run on the cluster, else the error they meet."""
    from enrich.tables import DEFAULT_MODEL
    from stores.redis_snapshot import RedisSnapshotStore

    client = redis_client(Settings(), url)
    store = RedisSnapshotStore(client, DEFAULT_MODEL, prefix=f"p{uuid.uuid4().hex[:6]}:snap:")
    try:
        for i in range(8):
            store.lookup({f"probe-{i}-{j}" for j in range(4)})
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def test_the_enrichment_flow_runs_on_a_redis_cluster(
    pipeline_settings: Settings, redis_cluster_url: str, tmp_path: Path
) -> None:
    problem = snapshot_store_works_on(redis_cluster_url)
    if problem is not None:
        pytest.xfail(f"the snapshot store does not run on a Redis Cluster yet: {problem}")
    s = pipeline_settings.model_copy(update={"redis_url": redis_cluster_url, "join_max_wait_ms": 1500})
    try:
        cfg = SimConfig(vehicles=120, rate=2000, duration=4, cdc_rate=0, scenarios=["headlights-left-on"],
                        ground_truth=tmp_path / "gt.json")  # fmt: skip
        cfg.incidents_per_scenario = 3
        report = Simulation(cfg, s).run()
        run_to_eof("snapshot", s, tmp_path / "snap.log")
        run_to_eof("enrich", s, tmp_path / "enrich.log")
        events = [orjson.loads(m.value() or b"") for m in consume_all(s.kafka_bootstrap, [s.topic_enriched],
                                                                       expected=report.events)]  # fmt: skip
        outliers = [
            orjson.loads(m.value() or b"") for m in consume_all(s.kafka_bootstrap, [s.topic_outliers])
        ]
        assert len(events) == report.events and outliers
        newest: dict[tuple[int, str], tuple[int, int, str, Any]] = {}
        for e in events:
            for path, value in e["signals"].items():
                key = (e["car_id"], path)
                if key not in newest or newest[key][:3] < (e["ts"], e["seq"], e["device_id"]):
                    newest[key] = (e["ts"], e["seq"], e["device_id"], value)
        cars = sorted({e["car_id"] for e in events})

        async def read() -> tuple[dict[int, bytes], list[bytes]]:
            reader = RedisVehicleReader(async_client(redis_cluster_url), s.state_prefix, classes_ttl_s=0)
            docs = await reader.docs(cars)
            page = await reader.list_incidents(IncidentQuery(), None, None, 1000)
            return docs, page.items

        docs, incidents = asyncio.run(read())
        assert sorted(docs) == cars
        for car, raw in docs.items():
            state = orjson.loads(raw)
            for path, sig in state["signals"].items():
                assert (sig["ts"], sig["seq"], sig["device_id"], sig["value"]) == newest[(car, path)]
        assert {orjson.loads(r)["incident_id"] for r in incidents} == {o["incident_id"] for o in outliers}
        client = sync_client(redis_cluster_url)
        layout = Keys.of(s.state_prefix, cluster=True)
        doc_nodes = {client.get_node_from_key(layout.car(c)).name for c in cars}
        assert len(doc_nodes) == 3  # the documents spread over every master
    finally:
        client = sync_client(redis_cluster_url)
        for prefix in (s.state_prefix, s.snapshot_prefix):
            delete_prefix(client, prefix)
