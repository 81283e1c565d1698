"""``/readyz`` and the API's answers while Redis or Kafka is away (a private Redis killed and restarted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from enrich.settings import Settings
from stack.procs import free_port
from tests.private_services import PrivateRedis

pytestmark = pytest.mark.integration
AUTH = {"Authorization": "Bearer fe_0123456789ab_" + "A" * 43}  # well formed, unknown


def test_ready_when_both_answer(isolated_settings: Settings) -> None:
    with TestClient(create_app(isolated_settings)) as http:
        r = http.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"ready": True, "redis": True, "kafka": True, "down": []}
        assert http.get("/healthz").status_code == 200


def test_redis_restart_answers_503_then_recovers(isolated_settings: Settings, tmp_path: Path) -> None:
    private = PrivateRedis(tmp_path / "redis")
    private.start()
    s = isolated_settings.model_copy(update={"redis_url": private.url})
    try:
        with TestClient(create_app(s)) as http:
            assert http.get("/readyz").status_code == 200
            private.kill()
            r = http.get("/readyz")
            assert r.status_code == 503
            assert r.json()["down"] == ["redis"] and r.json()["kafka"] is True
            assert http.get("/v1/vehicles/1", headers=AUTH).status_code == 503  # not a 500, and quickly
            metrics = http.get("/metrics").text
            assert 'enrich_dependency_up{dependency="redis"} 0.0' in metrics
            private.start()
            assert http.get("/readyz").status_code == 200  # the same client reconnects
            assert (
                http.get("/v1/vehicles/1", headers=AUTH).status_code == 401
            )  # Redis answers: the key is unknown
            assert 'enrich_dependency_up{dependency="redis"} 1.0' in http.get("/metrics").text
    finally:
        private.stop()


def test_kafka_away_answers_503_naming_it(isolated_settings: Settings) -> None:
    s = isolated_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    with TestClient(create_app(s)) as http:
        r = http.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {"ready": False, "redis": True, "kafka": False, "down": ["kafka"]}
