"""The HTTP API v1 on real Redis: keys, ABAC with the shipped policies, problems, bounds, ETags, incidents,
silences, devices, rules, ops endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from alerts.outbox import Job, Outbox
from alerts.worker import SilenceStore
from api.main import create_app
from api.policy import SEED_POLICIES
from enrich.cdc import Change
from enrich.settings import Settings
from stores.redis_snapshot import RedisSnapshotStore
from tests.integration.api_util import car_row, cleanup, create_key, outlier, state_doc, write_states
from tests.test_schemas import Target

pytestmark = pytest.mark.integration
PROD = car_row(1, "prod", "prod", "seoul")
BETA = car_row(2, "beta", "pilot", "busan")
BETA_PROD = car_row(3, "beta", "prod", "busan")  # a beta car already at stage prod: forbidden to partners
BETA2 = car_row(4, "beta", "pilot", "seoul", model="Tesla Model 3")


@pytest.fixture
def fleet(isolated_settings: Settings) -> Iterator[tuple[Settings, dict[str, str]]]:
    s = isolated_settings
    write_states(
        s,
        [state_doc(r["car_id"], r) for r in (PROD, BETA, BETA_PROD, BETA2)],
        [outlier("inc-prod", PROD), outlier("inc-beta", BETA, starts=6_000)],
    )
    keys = {
        "ops": create_key(s, "ops", role="ops"),
        "beta": create_key(s, "partner", environment="beta"),
        "none": create_key(s, "untagged"),
    }
    yield s, keys
    cleanup(s)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def is_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["type"].startswith("https://") and body["title"]
    return body


def ids(page: dict[str, Any]) -> list[int]:
    return [v["car_id"] for v in page["items"]]


def test_authentication(fleet: tuple[Settings, dict[str, str]]) -> None:
    s, keys = fleet
    with TestClient(create_app(s)) as http:
        r = http.get("/v1/vehicles/1")
        assert is_problem(r, 401) and r.headers["www-authenticate"].startswith("Bearer")
        is_problem(http.get("/v1/vehicles/1", headers=auth("fe_000000000000_" + "x" * 43)), 401)
        wrong = keys["ops"][:-1] + ("A" if keys["ops"][-1] != "A" else "B")
        is_problem(http.get("/v1/vehicles/1", headers=auth(wrong)), 401)  # wrong secret
        is_problem(http.get("/v1/vehicles/1", headers=auth("x" * 5000)), 401)
        assert http.get("/v1/vehicles/1", headers=auth(keys["ops"])).status_code == 200
        assert http.get("/healthz").json() == {"status": "ok"}  # ops endpoints need no key


def test_revoked_and_expired_keys_are_refused(isolated_settings: Settings) -> None:
    import asyncio
    import time

    import redis.asyncio as aioredis

    from stores.apikeys import RedisApiKeyStore

    s = isolated_settings

    async def go() -> tuple[str, str, str]:
        client = aioredis.Redis.from_url(s.redis_url)
        store = RedisApiKeyStore(client, s.api_prefix)
        k1, t1 = await store.create("a", {"role": "ops"})
        _k2, t2 = await store.create("b", {"role": "ops"}, expires_at=int(time.time() * 1000) - 1)
        _k3, t3 = await store.create("c", {"role": "ops"}, expires_at=int(time.time() * 1000) + 3_600_000)
        assert await store.revoke(k1.id)
        raw = await client.hgetall(f"{s.api_prefix}key:{k1.id}")
        assert t1 not in str(raw)  # only the hash is stored
        await client.aclose()
        return t1, t2, t3

    revoked, expired, valid = asyncio.run(go())
    write_states(s, [state_doc(1, PROD)])
    with TestClient(create_app(s)) as http:
        is_problem(http.get("/v1/vehicles/1", headers=auth(revoked)), 401)
        is_problem(http.get("/v1/vehicles/1", headers=auth(expired)), 401)
        assert http.get("/v1/vehicles/1", headers=auth(valid)).status_code == 200
    cleanup(s)


def test_abac_with_the_shipped_policies(fleet: tuple[Settings, dict[str, str]]) -> None:
    s, keys = fleet
    with TestClient(create_app(s)) as http:
        beta, ops, none = auth(keys["beta"]), auth(keys["ops"]), auth(keys["none"])
        # a missing and a forbidden vehicle answer the same 404
        forbidden = is_problem(http.get("/v1/vehicles/1", headers=beta), 404)
        missing = is_problem(http.get("/v1/vehicles/999", headers=beta), 404)
        assert forbidden["title"] == missing["title"]
        is_problem(http.get("/v1/vehicles/3", headers=beta), 404)  # stage prod: the forbid wins
        assert http.get("/v1/vehicles/2", headers=beta).json()["tags"]["environment"] == "beta"
        assert ids(http.get("/v1/vehicles", headers=beta).json()) == [2, 4]
        assert ids(http.get("/v1/vehicles", headers=ops).json()) == [1, 2, 3, 4]
        assert ids(http.get("/v1/vehicles", headers=none).json()) == []  # default deny
        assert ids(http.get("/v1/vehicles", params={"environment": "prod"}, headers=beta).json()) == []
        inc = http.get("/v1/incidents", headers=beta).json()
        assert [i["incident_id"] for i in inc["items"]] == ["inc-beta"]
        is_problem(http.get("/v1/incidents/inc-prod", headers=beta), 404)
        assert http.get("/v1/incidents/inc-prod", headers=ops).status_code == 200
        # silences: only with the key's own environment as requested tag
        body = {"matchers": ['environment="prod"', 'alertname="headlights-left-on"'], "duration": "1h"}
        is_problem(http.post("/v1/silences", json=body, headers=beta), 403)
        is_problem(http.post("/v1/silences", json={**body, "matchers": ['alertname="x"']}, headers=beta), 403)
        ok = http.post("/v1/silences", json={**body, "matchers": ['environment="beta"']}, headers=beta)
        assert ok.status_code == 201 and ok.json()["tags"] == {"environment": "beta"}
        prod_silence = http.post("/v1/silences", json=body, headers=ops).json()
        assert [x["id"] for x in http.get("/v1/silences", headers=beta).json()] == [ok.json()["id"]]
        is_problem(http.delete(f"/v1/silences/{prod_silence['id']}", headers=beta), 404)
        assert http.delete(f"/v1/silences/{ok.json()['id']}", headers=beta).status_code == 204
        # the alerts worker sees the API's silences (same store), the expired one inactive
        active = {
            x.id: x.active(ok.json()["starts_at"] + 1000)
            for x in SilenceStore(redis.Redis.from_url(s.redis_url), s.alerts_prefix).all()
        }
        assert active == {ok.json()["id"]: False, prod_silence["id"]: True}


def test_vehicle_state_etag_and_incidents(fleet: tuple[Settings, dict[str, str]]) -> None:
    s, keys = fleet
    ops = auth(keys["ops"])
    with TestClient(create_app(s)) as http:
        r = http.get("/v1/vehicles/2", headers=ops)
        body = r.json()
        Target("vehicle-state", None).validator().validate(
            {k: v for k, v in body.items() if k not in ("tags", "active_incidents")}
        )
        assert [i["incident_id"] for i in body["active_incidents"]] == ["inc-beta"]
        etag = r.headers["etag"]
        assert http.get("/v1/vehicles/2", headers={**ops, "If-None-Match": etag}).status_code == 304
        write_states(
            s, [], [outlier("inc-beta", BETA, "resolved", starts=6_000)]
        )  # incident change: new ETag
        r2 = http.get("/v1/vehicles/2", headers={**ops, "If-None-Match": etag})
        assert r2.status_code == 200 and r2.json()["active_incidents"] == []
        write_states(s, [state_doc(2, BETA, version=2)])
        assert (
            http.get("/v1/vehicles/2", headers={**ops, "If-None-Match": r2.headers["etag"]}).status_code
            == 200
        )
        detail = http.get("/v1/incidents/inc-beta", headers=ops).json()
        assert detail["status"] == "resolved" and detail["deliveries"] == {}
        Outbox(redis.Redis.from_url(s.redis_url), s.alerts_prefix).enqueue(
            Job("msg_1", "ops", "webhook", {"body": "{}"}, incidents=["inc-beta"])
        )
        log = http.get("/v1/incidents/inc-beta", headers=ops).json()["deliveries"]
        assert log["ops"]["status"] == "queued" and log["ops"]["job"] == "msg_1"
        assert [
            i["incident_id"]
            for i in http.get("/v1/incidents", params={"status": "firing"}, headers=ops).json()["items"]
        ] == ["inc-prod"]


def test_bounds_cursors_and_problems(fleet: tuple[Settings, dict[str, str]]) -> None:
    s, keys = fleet
    ops = auth(keys["ops"])
    with TestClient(create_app(s)) as http:
        huge = "9" * 5000
        r = http.get(f"/v1/vehicles/{huge}", headers=ops)
        assert is_problem(r, 422) and huge not in r.text and len(r.text) < 2000
        is_problem(http.get("/v1/vehicles", params={"cursor": "99999999999999999999999"}, headers=ops), 400)
        is_problem(http.get("/v1/vehicles", params={"cursor": "x" * 300}, headers=ops), 422)
        is_problem(http.get("/v1/vehicles", params={"limit": 5001}, headers=ops), 422)
        is_problem(http.get("/v1/vehicles", params={"fleet": "x" * 65}, headers=ops), 422)
        is_problem(http.get("/v1/vehicles", params={"bbox": "1,2,3"}, headers=ops), 422)
        typo = is_problem(http.get("/v1/vehicles", params={"fleeet": "busan"}, headers=ops), 422)
        assert typo["errors"] == [{"field": "query.fleeet", "message": "unknown parameter"}]
        is_problem(http.get("/v1/vehicles/1", params={"x": "1"}, headers=ops), 422)
        is_problem(http.get("/v1/vehicles", params={"bbox": "50,0,10,1"}, headers=ops), 422)
        is_problem(http.get("/vehicles/1", headers=ops), 404)  # the unversioned routes are gone
        is_problem(
            http.post("/v1/silences", json={"matchers": ["x" * 300], "duration": "1h"}, headers=ops), 422
        )
        is_problem(
            http.post("/v1/silences", json={"matchers": ['a=~"("'], "duration": "1h"}, headers=ops), 422
        )
        is_problem(
            http.post("/v1/silences", content=b"{", headers={**ops, "content-type": "application/json"}), 422
        )
        page = http.get("/v1/vehicles", params={"limit": 2, "fleet": "busan"}, headers=ops).json()
        assert ids(page) == [2, 3] and page["next_cursor"] is None
        page = http.get("/v1/vehicles", params={"limit": 1}, headers=ops).json()
        assert len(page["next_cursor"]) <= 200
        # a cursor is bound to its filters and cannot be edited
        is_problem(
            http.get("/v1/vehicles", params={"cursor": page["next_cursor"], "fleet": "seoul"}, headers=ops),
            400,
        )
        tampered = page["next_cursor"][:-2] + ("AA" if not page["next_cursor"].endswith("AA") else "BB")
        is_problem(http.get("/v1/vehicles", params={"cursor": tampered}, headers=ops), 400)
        seen = ids(page)
        while page["next_cursor"]:
            page = http.get(
                "/v1/vehicles", params={"limit": 1, "cursor": page["next_cursor"]}, headers=ops
            ).json()
            seen += ids(page)
        assert seen == [1, 2, 3, 4]


def test_devices_rules_and_ops(fleet: tuple[Settings, dict[str, str]]) -> None:
    s, keys = fleet
    store = RedisSnapshotStore.from_settings(s, redis.Redis.from_url(s.redis_url))
    store.apply(
        [
            Change("carinfo", "1", "upsert", PROD, "L1", 1, True),
            Change("deviceinfo", "d1", "upsert", {"device_id": "d1", "car_id": 1}, "L2", 2, True),
            Change("reservation", "r1", "upsert", {"reservation_id": "r1", "car_id": 1, "status": "ACTIVE"},
                   "L3", 1_000),
            Change("reservation", "r1", "upsert", {"reservation_id": "r1", "car_id": 1, "status": "ENDED"},
                   "L4", 2_000),
        ]
    )  # fmt: skip
    with TestClient(create_app(s)) as http:
        d = http.get("/v1/devices/d1", headers=auth(keys["ops"])).json()
        assert d["car"] == PROD and d["device"]["car_id"] == 1 and d["reservation"] is None
        assert d["devices"] == 1 and d["positions"] == {"device": "L2", "car": "L1", "reservation": None}
        then = http.get("/v1/devices/d1", params={"at": 1_500}, headers=auth(keys["ops"])).json()
        assert then["at"] == 1_500 and then["reservation"]["reservation_id"] == "r1"  # as of that time
        is_problem(http.get("/v1/devices/d1", headers=auth(keys["beta"])), 404)  # its car is prod
        is_problem(http.get("/v1/devices/nope", headers=auth(keys["ops"])), 404)
        rules = http.get("/v1/rules", headers=auth(keys["none"])).json()
        assert "headlights-left-on" in {r["id"] for r in rules}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {
            "ready": True,
            "redis": True,
            "kafka": True,
            "down": [],
        }
        metrics = http.get("/metrics").text
        assert (
            'enrich_api_requests_total{method="GET",route="/v1/devices/{device_id}",status="404"}' in metrics
        )
        assert "enrich_api_authz_decisions_total" in metrics


def test_readyz_reports_kafka_down(isolated_settings: Settings) -> None:
    from stack.procs import free_port

    s = isolated_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    with TestClient(create_app(s)) as http:
        r = http.get("/readyz")
        assert r.status_code == 503 and r.json() == {
            "ready": False,
            "redis": True,
            "kafka": False,
            "down": ["kafka"],
        }


def test_the_seed_policies_as_shipped(fleet: tuple[Settings, dict[str, str]]) -> None:
    """The seed's three policies alone: no ops exception, so stage=prod is forbidden to everyone."""
    s, keys = fleet
    prod_key = create_key(s, "prod-team", environment="prod")
    with TestClient(create_app(s.model_copy(update={"api_policies": SEED_POLICIES}))) as http:
        assert ids(http.get("/v1/vehicles", headers=auth(keys["beta"])).json()) == [2, 4]
        assert ids(http.get("/v1/vehicles", headers=auth(prod_key)).json()) == []  # car 1 is stage prod
        assert ids(http.get("/v1/vehicles", headers=auth(keys["ops"])).json()) == []  # role=ops means nothing
        body = {"matchers": ['environment="beta"'], "duration": "1h"}
        assert http.post("/v1/silences", json=body, headers=auth(keys["beta"])).status_code == 201
        assert http.post("/v1/silences", json=body, headers=auth(prod_key)).status_code == 403
        with_stage = {"matchers": ['environment="beta"', 'stage="prod"'], "duration": "1h"}
        assert http.post("/v1/silences", json=with_stage, headers=auth(keys["beta"])).status_code == 403


def test_openapi_is_complete() -> None:
    doc = create_app(Settings()).openapi()
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), (path, method)
            if path.startswith("/v1/"):
                assert op.get("security") == [{"ApiKey": []}], (path, method)
                assert "401" in op["responses"], (path, method)
                assert op["responses"]["401"]["content"]["application/problem+json"]["example"]
    for name in (
        "VehicleDetail",
        "VehiclePage",
        "Incident",
        "IncidentDetail",
        "Silence",
        "SilenceIn",
        "Device",
    ):
        assert doc["components"]["schemas"][name].get("example"), name
    body = orjson.dumps(doc)
    assert b"HTTPValidationError" not in body
