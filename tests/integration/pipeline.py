"""Helpers to run the snapshot and enrichment flows as worker processes for a test."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis

from enrich.pipeline.state import public_document
from enrich.settings import Settings
from tests.integration.flow_proc import start_flow


def run_to_eof(name: str, settings: Settings, log: Path, recovery: Path | None = None, **extra: str) -> None:
    proc = start_flow(name, settings, recovery, "--until-eof", log=log, **extra)
    assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]


@contextlib.contextmanager
def running(
    names: list[str], settings: Settings, tmp: Path, *, recovery: bool = False, **extra: str
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs = {
        name: start_flow(
            name, settings, tmp / f"rec-{name}" if recovery else None, log=tmp / f"{name}.log", **extra
        )
        for name in names
    }
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def vehicle_states(settings: Settings) -> dict[int, dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.state_prefix}car:*", count=1000))
    values: list[Any] = client.mget(keys) if keys else []
    return {
        int(k.decode().rsplit(":", 1)[1]): public_document(orjson.loads(v))
        for k, v in zip(keys, values, strict=True)
    }
