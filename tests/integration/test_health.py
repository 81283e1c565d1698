"""`enrich health` against real workers: a flow's metrics endpoint and the alerts worker.

The alerts check looks for the worker's own Redis connections, so this test gives the worker a private
redis-server (the shared one has every other test's clients on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from enrich.settings import Settings
from stack.procs import free_port, wait_until
from stack.redis_server import RedisServer
from tests.integration.flow_proc import flow_env, start_flow

pytestmark = pytest.mark.integration


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli.main", "health", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


class Accept:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        return "250 OK"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.process.stop()


def test_alerts_check_follows_the_worker_and_its_smtp_server(
    pipeline_settings: Settings, private_redis: str, tmp_path: Path
) -> None:
    smtp = Controller(Accept(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    s = pipeline_settings.model_copy(update={"redis_url": private_redis})
    env = flow_env(s, ENRICH_SMTP_HOST="127.0.0.1", ENRICH_SMTP_PORT=str(smtp.port))
    assert wait_until(lambda: health(env, "alerts", "--no-worker").returncode == 0, 30), "Redis not up"
    no_worker = health(env, "alerts", "--idle", "5")
    assert no_worker.returncode == 1
    assert "no Redis activity from an alerts worker" in no_worker.stderr

    with open(tmp_path / "alerts.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "cli.main", "alerts", "run"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert wait_until(lambda: health(env, "alerts", "--idle", "5").returncode == 0, 60, interval=0.5), (
            health(env, "alerts").stderr + (tmp_path / "alerts.log").read_text()[-2000:]
        )
        smtp.stop()
        down = health(env, "alerts", "--idle", "5")
        assert down.returncode == 1 and f"SMTP 127.0.0.1:{smtp.port}" in down.stderr
        # the liveness form asks only whether the worker itself is alive
        assert health(env, "alerts", "--idle", "5", "--no-dependencies").returncode == 0
    finally:
        worker.kill()
        worker.wait()
    # The worker's connections close with it: the check notices within --idle.
    smtp = Controller(Accept(), hostname="127.0.0.1", port=smtp.port)
    smtp.start()
    try:
        assert wait_until(lambda: health(env, "alerts", "--idle", "5").returncode == 1, 30, interval=0.5)
        assert "no Redis activity" in health(env, "alerts", "--idle", "5").stderr
    finally:
        smtp.stop()


def test_flow_metrics_endpoint_is_its_health(pipeline_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = flow_env(pipeline_settings)
    assert health(env, "http", url).returncode == 1  # nothing listens yet
    proc = start_flow(
        "enrich", pipeline_settings, None, "--metrics-port", str(port), log=tmp_path / "flow.log"
    )
    try:
        assert wait_until(lambda: health(env, "http", url).returncode == 0, 60, interval=0.5), (
            tmp_path / "flow.log"
        ).read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert wait_until(lambda: health(env, "http", url).returncode == 1, 30)
