"""Run `enrich flow ...` as a worker subprocess configured for one test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from enrich.settings import Settings


def flow_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {**os.environ, **settings.as_env(), "ENRICH_METRICS_PORT": "0", "ENRICH_SNAPSHOT_INTERVAL_S": "1"}
    env.update(extra)
    return env


def start_flow(
    name: str, settings: Settings, recovery: Path | None, *args: str, log: Path, **extra: str
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "cli.main", "flow", name, *args]
    cmd += ["--recovery-dir", str(recovery)] if recovery is not None else ["--no-recovery"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=flow_env(settings, **extra), stdout=out, stderr=subprocess.STDOUT)
