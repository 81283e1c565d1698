"""Run `enrich flow ...` as a worker subprocess configured for one test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from enrich.settings import Settings


def flow_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ENRICH_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        ENRICH_REDIS_URL=settings.redis_url,
        ENRICH_TOPIC_TELEMETRY=settings.topic_telemetry,
        ENRICH_TOPIC_CDC_PREFIX=settings.topic_cdc_prefix,
        ENRICH_TOPIC_ENRICHED=settings.topic_enriched,
        ENRICH_TOPIC_OUTLIERS=settings.topic_outliers,
        ENRICH_TOPIC_DLQ=settings.topic_dlq,
        ENRICH_SNAPSHOT_PREFIX=settings.snapshot_prefix,
        ENRICH_STATE_PREFIX=settings.state_prefix,
        ENRICH_JOIN_MAX_WAIT_MS=str(settings.join_max_wait_ms),
        ENRICH_METRICS_PORT="0",
        ENRICH_SNAPSHOT_INTERVAL_S="1",
    )
    if settings.history_dir is not None:
        env["ENRICH_HISTORY_DIR"] = str(settings.history_dir)
    env.update(extra)
    return env


def start_flow(
    name: str, settings: Settings, recovery: Path | None, *args: str, log: Path, **extra: str
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "cli.main", "flow", name, *args]
    cmd += ["--recovery-dir", str(recovery)] if recovery is not None else ["--no-recovery"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=flow_env(settings, **extra), stdout=out, stderr=subprocess.STDOUT)
