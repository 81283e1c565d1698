"""The enrichment flow as two worker processes of one bytewax cluster (-i/-a), with recovery."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from stack.procs import free_port
from stores.parquet_history import read_history
from tests.integration.flow_proc import flow_env
from tests.integration.pipeline import run_to_eof, vehicle_states
from tests.kafka_util import consume_all

pytestmark = pytest.mark.integration


def test_two_processes_share_the_partitions_and_the_vehicles(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    s = pipeline_settings  # 2 telemetry partitions: a multiple of the 2 processes
    cfg = SimConfig(
        vehicles=120, devices_per_car=2, rate=3000, duration=3, cdc_rate=0, ground_truth=tmp_path / "gt.json"
    )
    report = Simulation(cfg, s).run()
    run_to_eof("snapshot", s, tmp_path / "snap.log")

    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    env = flow_env(s)
    procs = []
    for i in (0, 1):
        cmd = [sys.executable, "-m", "cli.main", "flow", "enrich", "--until-eof", "-r", str(tmp_path / "rec"),
               "-i", str(i), "-a", addresses]  # fmt: skip
        with open(tmp_path / f"w{i}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]

    enriched = consume_all(s.kafka_bootstrap, [s.topic_enriched], expected=report.events)
    assert len(enriched) == report.events
    states = vehicle_states(s)
    assert len(states) == 120
    # A car's two devices may sit on partitions read by different processes: its state still has both.
    assert all(len(st["devices"]) == 2 for st in states.values())
    assert read_history(tmp_path / "history", "enriched").num_rows == report.events
