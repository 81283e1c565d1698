"""The HTTP API on real Redis: vehicle state, ETag, paging, merged snapshot records."""

from __future__ import annotations

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from alerts.outbox import Job, Outbox
from api.main import create_app
from enrich.cdc import Change
from enrich.pipeline.state import fold_documents
from enrich.settings import Settings
from enrich.tables import DEFAULT_TABLES
from enrich.telemetry import Telemetry
from stores.redis_snapshot import RedisSnapshotStore
from tests.test_schemas import Target

pytestmark = pytest.mark.integration


def test_vehicle_state_and_device_record(isolated_settings: Settings) -> None:
    s = isolated_settings
    client = redis.Redis.from_url(s.redis_url)
    events = {car: [Telemetry(f"d{car}", 1_000 + car, 1, {"Vehicle.Speed": 10.0 * car})] for car in (1, 2, 3)}
    docs = fold_documents(events, now_ms=5)
    for car in (1, 2, 3):
        client.set(f"{s.state_prefix}car:{car}", orjson.dumps(docs[car]))
    store = RedisSnapshotStore(client, DEFAULT_TABLES, prefix=s.snapshot_prefix)
    store.apply([
        Change("carinfo", "7", "upsert", {"car_id": 7, "fleet": "busan"}, "L1", 1),
        Change("deviceinfo", "d7", "upsert", {"device_id": "d7", "car_id": 7}, "L2", 2),
    ])  # fmt: skip
    with TestClient(create_app(s)) as http:
        r = http.get("/vehicles/2")
        assert r.status_code == 200
        Target("vehicle-state", None).validator().validate(r.json())
        assert r.json()["signals"]["Vehicle.Speed"]["value"] == 20.0
        etag = r.headers["etag"]
        assert http.get("/vehicles/2", headers={"If-None-Match": etag}).status_code == 304
        assert http.get("/vehicles/999").status_code == 404
        page = http.get("/vehicles", params={"limit": 10}).json()
        assert sorted(v["car_id"] for v in page["items"]) == [1, 2, 3]
        record = http.get("/devices/d7/record").json()
        assert record["rows"]["carinfo"] == {"car_id": 7, "fleet": "busan"}
        assert http.get("/devices/nope/record").status_code == 404
        assert http.get("/healthz").json() == {"redis": True}
        outbox = Outbox(client, s.alerts_prefix)
        outbox.enqueue(Job("msg_1", "ops", "webhook", {"body": "{}"}, incidents=["inc-9"]))
        log = http.get("/incidents/inc-9/deliveries").json()
        assert log["ops"]["status"] == "queued" and log["ops"]["job"] == "msg_1"
        assert http.get("/incidents/nope/deliveries").status_code == 404
