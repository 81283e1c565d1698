"""Workers on one host with default settings, and ``enrich status`` (stack/status.py) watching them.

The snapshot flow, the enrichment flow and the alerts worker start directly with no port options: each
takes its kind's default metrics port (9464, 9465, 9466 — or the same block moved by
``ENRICH_METRICS_PORT_BASE`` when another process on this shared machine holds one of them), all run, report
their input lag and throughput; a kill -9 shows as dead with its last error, a SIGTERM unregisters. Then a
worker under ``enrich run``: killed, it shows as restarting and comes back with the restart counted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiosmtpd.controller import Controller

from enrich.settings import Settings, default_metrics_port
from simulator.run import SimConfig, Simulation
from stack.procs import free_port, free_port_block, port_free, wait_until

pytestmark = pytest.mark.integration
KINDS = ("flow-snapshot", "flow-enrich", "alerts")


class Accept:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        return "250 OK"


def metrics_base() -> int:
    """9464 when the default ports are free here, else a free block with the same layout."""
    if all(port_free(default_metrics_port(k)) for k in KINDS):  # type: ignore[arg-type]
        return 9464
    return free_port_block(4)


def status(env: dict[str, str], *args: str) -> tuple[int, Any]:
    cmd = [sys.executable, "-m", "cli.main", "status", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, orjson.loads(done.stdout) if "--json" in args else done.stdout


def rows(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in status(env, "--json")[1]}


@pytest.fixture
def env(pipeline_settings: Settings, tmp_path: Path) -> Iterator[dict[str, str]]:
    smtp = Controller(Accept(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    base = metrics_base()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")}
    env.update(pipeline_settings.as_env(), ENRICH_STATE_DIR=str(tmp_path / "state"),
               ENRICH_SMTP_HOST="127.0.0.1", ENRICH_SMTP_PORT=str(smtp.port),
               ENRICH_SNAPSHOT_INTERVAL_S="1")  # fmt: skip
    if base != 9464:
        env["ENRICH_METRICS_PORT_BASE"] = str(base)
    yield env
    smtp.stop()


def start(env: dict[str, str], log: Path, *command: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cli.main", *command], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def test_default_workers_run_side_by_side_and_a_killed_one_shows_dead(
    env: dict[str, str], pipeline_settings: Settings, tmp_path: Path
) -> None:
    procs = {
        "flow-snapshot": start(env, tmp_path / "snapshot.log", "flow", "snapshot"),
        "flow-enrich": start(env, tmp_path / "enrich.log", "flow", "enrich"),
        "alerts-run": start(env, tmp_path / "alerts.log", "alerts", "run"),
    }
    try:
        Simulation(SimConfig(vehicles=40, rate=800, duration=2, ground_truth=tmp_path / "gt.json"),
                   pipeline_settings).run()  # fmt: skip

        def all_caught_up() -> bool:
            found = rows(env)
            return set(found) == set(procs) and all(r["caught_up"] for r in found.values())

        assert wait_until(all_caught_up, 90, interval=1), status(env)[1] + "".join(
            p.read_text()[-1500:] for p in tmp_path.glob("*.log")
        )
        found = rows(env)
        base = int(env.get("ENRICH_METRICS_PORT_BASE", 9464))
        for name, offset in (("flow-snapshot", 0), ("flow-enrich", 1), ("alerts-run", 2)):
            row = found[name]
            assert row["pid"] == procs[name].pid and row["state"] == "running"
            assert row["metrics_url"] == f"http://127.0.0.1:{base + offset}/metrics"  # its kind's own port
            assert "enrich_input_lag" in httpx.get(row["metrics_url"], timeout=5).text
        telemetry = found["flow-enrich"]["inputs"][pipeline_settings.topic_telemetry]
        assert telemetry == {"partitions": pipeline_settings.telemetry_partitions, "lag": 0}
        assert set(found["alerts-run"]["inputs"]) == {pipeline_settings.topic_outliers}
        assert wait_until(lambda: (rows(env)["flow-enrich"]["rate"] or 0) > 0, 10)  # events were read

        os.kill(procs["flow-enrich"].pid, signal.SIGKILL)
        procs["flow-enrich"].wait()
        assert wait_until(lambda: rows(env)["flow-enrich"]["state"] == "dead", 10)
        code, text = status(env, "--plain")
        assert code == 1  # a dead worker fails `enrich status`
        dead = next(line for line in text.splitlines() if line.startswith("flow-enrich "))
        assert dead.split()[1] == "dead"
        assert "x flow-enrich: gone without a clean exit" in text and "needs attention: flow-enrich" in text
        assert {n: r["state"] for n, r in rows(env).items()} == {
            "flow-snapshot": "running", "flow-enrich": "dead", "alerts-run": "running"}  # fmt: skip

        procs["flow-snapshot"].send_signal(signal.SIGTERM)  # a clean stop unregisters
        procs["flow-snapshot"].wait(timeout=30)
        assert "flow-snapshot" not in rows(env)
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_supervised_worker_killed_restarts_and_status_counts_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "ENRICH_METRICS_PORT": "0"}
    sup = start(
        env, tmp_path / "sup.log", "run", "--name", "enricher", "--max-backoff", "1", "flow", "enrich"
    )
    try:
        assert wait_until(lambda: rows(env).get("enricher", {}).get("caught_up") is True, 90, interval=1), (
            status(env)[1] + (tmp_path / "state" / "workers" / "enricher.log").read_text()[-2000:]
        )
        first = rows(env)["enricher"]
        assert first["supervised"] and first["restarts"] == 0 and first["kind"] == "flow-enrich"
        os.kill(first["pid"], signal.SIGKILL)

        def back() -> bool:
            row = rows(env)["enricher"]
            return bool(row["state"] == "running" and row["pid"] != first["pid"] and row["restarts"] == 1)

        assert wait_until(back, 60, interval=0.5), status(env)[1]
        assert "killed by SIGKILL" in (rows(env)["enricher"]["error"] or "")
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sup.pid, signal.SIGKILL)
    assert rows(env)["enricher"]["state"] == "stopped"
