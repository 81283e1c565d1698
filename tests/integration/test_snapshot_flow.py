"""The CDC snapshot flow on real Kafka + Redis: both formats, redelivery, DLQ, kill -9 and recovery."""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from connectors.kafka_writer import KafkaWriter
from enrich.settings import Settings
from enrich.tables import DEFAULT_TABLES
from simulator.cdc import CdcEncoder
from simulator.workload import make_workload
from stack.procs import wait_until
from stores.redis_snapshot import RedisSnapshotStore
from tests.integration.flow_proc import start_flow
from tests.kafka_util import consume_all

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(pipeline_settings: Settings) -> Settings:
    return pipeline_settings


def produce(settings: Settings, messages: list[tuple[bytes, bytes | None, str]]) -> None:
    writer = KafkaWriter(settings.kafka_bootstrap, stage="test.produce")
    for key, value, table in messages:
        writer.send_to(settings.cdc_topic(table), key, value)
    writer.flush()
    assert writer.rejected == 0


def store_of(settings: Settings) -> RedisSnapshotStore:
    return RedisSnapshotStore.from_settings(settings, redis.Redis.from_url(settings.redis_url))


def snapshot_rows(settings: Settings) -> dict[str, dict[str, dict[str, Any]]]:
    store = store_of(settings)
    return {t: store.rows(t) for t in DEFAULT_TABLES}


def run_to_eof(settings: Settings, tmp: Path, recovery: Path | None = None) -> None:
    proc = start_flow("snapshot", settings, recovery, "--until-eof", log=tmp / "flow.log")
    assert proc.wait(timeout=300) == 0, (tmp / "flow.log").read_text()[-3000:]


@pytest.mark.parametrize("fmt", ["debezium", "dms"])
def test_flow_builds_the_snapshot_both_formats(settings: Settings, tmp_path: Path, fmt: str) -> None:
    wl = make_workload(fmt, 3000, keys=150)  # type: ignore[arg-type]
    enc = CdcEncoder(fmt, lsn_start=10**12)  # type: ignore[arg-type]
    # Delete then a late, older upsert of the same row: it must not come back.
    late_row = {"car_id": 99_999, "status": "ACTIVE"}
    older = enc.encode("carinfo", "insert", late_row, 1)
    deleted = enc.encode("carinfo", "delete", late_row, 2)
    extra: list[tuple[bytes, bytes | None, str]] = [(k, v, "carinfo") for k, v in older + deleted]
    extra.append((older[0][0], older[0][1], "carinfo"))
    bad = [
        (b"k1", b"this is not json", "carinfo"),
        (b"k2", b'{"op":"c","source":{"table":"fuel","lsn":5},"after":{"id":1}}', "deviceinfo"),
        (b"k3", b'{"op":"c","source":{"table":"carinfo","lsn":5},"after":{"status":"x"}}', "carinfo"),
    ]
    control = {
        "metadata": {"timestamp": "2026-01-01T00:00:00Z", "record-type": "control", "operation": "add-column",
                     "partition-key-type": "task-id", "schema-name": "fleet", "table-name": "carinfo"}
    }  # fmt: skip
    messages = (
        wl.messages[:1500] + bad + [(b"ddl", orjson.dumps(control), "carinfo")] + wl.messages[1500:] + extra
    )
    produce(settings, messages)
    run_to_eof(settings, tmp_path)

    assert snapshot_rows(settings) == wl.truth
    assert store_of(settings).get("carinfo", "99999") is not None  # the tombstone of the deleted row
    # Malformed input is in the DLQ with reason, origin and the original bytes; nothing else is.
    letters = [
        orjson.loads(m.value() or b"") for m in consume_all(settings.kafka_bootstrap, [settings.topic_dlq])
    ]
    assert sorted(x["reason"] for x in letters) == ["missing_key", "not_json", "unknown_table"]
    by_reason = {x["reason"]: x for x in letters}
    assert base64.b64decode(by_reason["not_json"]["value_b64"]) == b"this is not json"
    assert by_reason["unknown_table"]["field_path"] == "source.table"
    assert by_reason["missing_key"]["source"]["topic"] == settings.cdc_topic("carinfo")
    assert by_reason["missing_key"]["source"]["offset"] >= 0

    # Looking a device up returns the merged device + car + active reservation.
    some_device = next(iter(wl.truth["deviceinfo"].values()))
    merged = store_of(settings).lookup([str(some_device["device_id"])])
    record = merged[str(some_device["device_id"])].latest
    assert record.get("device") == some_device
    assert record.get("car") == wl.truth["carinfo"].get(str(some_device["car_id"]))


def test_flow_keeps_running_after_bad_input_and_publishes_changes(settings: Settings, tmp_path: Path) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    proc = start_flow("snapshot", settings, tmp_path / "rec", log=tmp_path / "flow.log")
    try:
        enc = CdcEncoder("debezium")
        produce(settings, [(b"x", b"\x00\x01 garbage", "carinfo")])
        produce(settings, [(k, v, "carinfo") for k, v in enc.encode("carinfo", "insert", {"car_id": 5}, 1)])
        store = store_of(settings)
        assert wait_until(lambda: store.get("carinfo", "5") is not None, 60), (
            tmp_path / "flow.log"
        ).read_text()
        assert proc.poll() is None  # still running
        # The change feed carries table, key (and the car a device or child points at) for invalidation.
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(f"{settings.snapshot_prefix}changes")  # type: ignore[assignment]
        lines = [line for _id, fields in entries for line in fields[b"c"].decode().split("\n")]
        assert "carinfo\t5\t" in lines
        # A later update arrives while the flow runs.
        produce(
            settings,
            [(k, v, "carinfo") for k, v in enc.encode("carinfo", "update", {"car_id": 5, "s": 2}, 2)],
        )

        def updated() -> bool:
            row = store.get("carinfo", "5")
            return row is not None and row.row == {"car_id": 5, "s": 2}

        assert wait_until(updated, 60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_kill_9_mid_stream_then_recovery_matches_the_source(settings: Settings, tmp_path: Path) -> None:
    wl = make_workload("debezium", 100_000, keys=5000, seed=9)
    half = len(wl.messages) * 6 // 10
    produce(settings, wl.messages[:half])
    recovery = tmp_path / "recovery"
    client = redis.Redis.from_url(settings.redis_url)
    feed = f"{settings.snapshot_prefix}changes"
    proc = start_flow("snapshot", settings, recovery, log=tmp_path / "flow.log")
    # Wait until the flow has written part of the stream, then kill it without warning.
    assert wait_until(lambda: client.xlen(feed) >= 5, 120), (tmp_path / "flow.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    partial = {t: len(r) for t, r in snapshot_rows(settings).items()}
    produce(settings, wl.messages[half:])
    started = time.monotonic()
    run_to_eof(settings, tmp_path, recovery)
    assert time.monotonic() - started < 300
    assert snapshot_rows(settings) == wl.truth, f"partial before restart: {partial}"
