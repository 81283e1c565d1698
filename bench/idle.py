"""Idle CPU of an enrichment worker by the number of vehicles it holds (with the default rules).

The snapshot (cars and devices) is written straight into the store, one telemetry event per device is
produced, and an enrichment worker (with recovery, as deployed) processes them; once every event is out
and the worker's last epoch is written, its CPU time is sampled over ``seconds`` of wall time with no
input. A worker whose timers sweep the fleet burns CPU in proportion to the vehicles it holds; one whose
timers cost only what is due does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis
from confluent_kafka import Consumer, TopicPartition

from connectors.kafka_writer import KafkaWriter
from enrich.cdc import Change
from enrich.settings import Settings
from enrich.tables import load_model
from stores.redis_snapshot import RedisSnapshotStore

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _enriched(s: Settings) -> int:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "idle-probe"})
    md = c.list_topics(s.topic_enriched, timeout=10)
    n = sum(
        c.get_watermark_offsets(TopicPartition(s.topic_enriched, p), timeout=10)[1]
        for p in md.topics[s.topic_enriched].partitions
    )
    c.close()
    return n


def load(s: Settings, vehicles: int) -> None:
    """The snapshot of ``vehicles`` cars with one device each, and one event per device."""
    store = RedisSnapshotStore.from_settings(s, redis.Redis.from_url(s.redis_url))
    m = load_model(s.tables_file)
    car_pk, dev_pk = m.tables[m.car].primary_key, m.tables[m.device].primary_key
    pos = 0
    chunk: list[Change] = []
    for car in range(1, vehicles + 1):
        pos += 2
        chunk.append(
            Change(m.car, str(car), "upsert", {car_pk: car, "fleet": "idle"}, f"L{pos:020d}", 1, True)
        )
        chunk.append(
            Change(
                m.device,
                f"i{car}",
                "upsert",
                {dev_pk: f"i{car}", m.car_key: car},
                f"L{pos + 1:020d}",
                1,
                True,
            )
        )
        if len(chunk) >= 20_000:
            store.apply(chunk)
            chunk = []
    if chunk:
        store.apply(chunk)
    producer = KafkaWriter(s.kafka_bootstrap, stage="bench.idle", config={"linger.ms": 20})
    now = int(time.time() * 1000) - 60_000
    for car in range(1, vehicles + 1):
        body = orjson.dumps(
            {
                "device_id": f"i{car}",
                "ts": now + car % 50_000,
                "seq": 1,
                "signals": {"Vehicle.Speed": 0.0, "Vehicle.LowVoltageBattery.CurrentVoltage": 12.6},
            }
        )
        producer.send_to(s.topic_telemetry, f"i{car}".encode(), body)
    producer.flush()


def measure(s: Settings, env: dict[str, str], vehicles: int, seconds: float, tmp: Path) -> float:
    """CPU seconds per wall second of an idle worker holding ``vehicles`` vehicles."""
    load(s, vehicles)
    log = open(tmp / f"idle-{vehicles}.log", "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "cli.main", "flow", "enrich", "--recovery-dir", str(tmp / f"rec-{vehicles}")]
    proc = subprocess.Popen(cmd, env={**env, "ENRICH_SNAPSHOT_INTERVAL_S": "2"}, stdout=log, stderr=log)
    try:
        deadline = time.time() + 900
        while _enriched(s) < vehicles and time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker died: see {tmp}/idle-{vehicles}.log")
            time.sleep(1)
        # Past the idle marker and the last epoch snapshot (with a million vehicles, writing that recovery
        # snapshot takes a while): wait until three 2-second windows in a row each cost under a tenth of a
        # core. The idle marker comes once the broker has vouched for ENRICH_WATERMARK_IDLE_S of quiet
        # (connectors.idleness, asked about once a second): until then a quiet window is only a lull.
        marker = time.monotonic() + float(env.get("ENRICH_WATERMARK_IDLE_S", "10")) + 3
        while time.monotonic() < marker:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker died: see {tmp}/idle-{vehicles}.log")
            time.sleep(0.5)
        settle, quiet = time.monotonic() + 600, 0
        while time.monotonic() < settle and quiet < 3:  # three quiet windows in a row: not a lull
            c, t = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(2)
            quiet = quiet + 1 if (cpu_seconds(proc.pid) - c) / (time.monotonic() - t) < 0.1 else 0
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        return (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
        client = redis.Redis.from_url(s.redis_url)
        for prefix in (s.state_prefix, s.snapshot_prefix):
            keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
            for i in range(0, len(keys), 10_000):
                client.delete(*keys[i : i + 10_000])
