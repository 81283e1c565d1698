"""A worker that cannot start says why in one line on stderr and exits non-zero (78: configuration, 69: its
port is taken), and `enrich status` lists it as dead with that line — real processes, no services needed
(the failures come before any connection)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stack.supervisor import EXIT_CONFIG, EXIT_UNAVAILABLE


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")}
    base.update(ENRICH_STATE_DIR=str(tmp_path), ENRICH_KAFKA_BOOTSTRAP="127.0.0.1:1",
                ENRICH_REDIS_URL="redis://127.0.0.1:1/0", **env)  # fmt: skip
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=base, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(("command", "option"), [(["flow", "snapshot"], "--metrics-port"),
                                                 (["flow", "enrich"], "--metrics-port"),
                                                 (["alerts", "run"], "--metrics-port"),
                                                 (["api"], "--port")])  # fmt: skip
def test_a_port_in_use_is_one_line_and_exit_69(
    tmp_path: Path, taken_port: int, command: list[str], option: str
) -> None:
    done = run(tmp_path, *command, option, str(taken_port))
    assert done.returncode == EXIT_UNAVAILABLE
    assert f"enrich {' '.join(command)}: cannot start: " in one_line(done)
    assert f"127.0.0.1:{taken_port} is in use (another worker?)" in done.stderr
    status = run(tmp_path, "status", "--json")
    (row,) = orjson.loads(status.stdout)
    assert row["state"] == "dead" and f"127.0.0.1:{taken_port} is in use" in row["error"]
    assert status.returncode == 1


def test_a_default_port_taken_names_the_port_and_the_way_out(tmp_path: Path, taken_port: int) -> None:
    # the enrichment flow's default is base + 1: take it through ENRICH_METRICS_PORT_BASE
    done = run(tmp_path, "flow", "enrich", ENRICH_METRICS_PORT_BASE=str(taken_port - 1))
    assert done.returncode == EXIT_UNAVAILABLE
    assert "--metrics-port or ENRICH_METRICS_PORT (0 = off)" in one_line(done)


def test_configuration_errors_are_one_line_and_exit_78(tmp_path: Path) -> None:
    bad_settings = run(tmp_path, "flow", "snapshot", ENRICH_TELEMETRY_PARTITIONS="many")
    assert bad_settings.returncode == EXIT_CONFIG
    assert "cannot start: invalid settings: ENRICH_TELEMETRY_PARTITIONS='many'" in one_line(bad_settings)
    alerts = tmp_path / "alerts.yaml"
    alerts.write_text("route: {receiver: nobody}\n")
    bad_alerts = run(tmp_path, "alerts", "run", "--metrics-port", "0", ENRICH_ALERTS_CONFIG=str(alerts))
    assert bad_alerts.returncode == EXIT_CONFIG
    assert one_line(bad_alerts).startswith("enrich alerts run: cannot start: alerts configuration:")
