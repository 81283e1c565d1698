"""Latency of the enrichment flow at a steady input rate: produce → enriched and produce → outlier.

Both flows run as workers; the simulator publishes at ``rate`` events/s with the outlier scenarios; two
consumers note when each enriched event and each outlier event arrives. Latency = arrival − the create
time of the telemetry record (same clock). An outlier is matched to the telemetry event that caused it:
a resolved outlier ends at the event time of the event that ended the condition (device and time match);
outliers fired by a timer have no such event and are left out of the outlier figures.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from simulator.scenarios import SCENARIOS


def _consumer(s: Settings, **extra: object) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "auto.offset.reset": "earliest",
            **extra,
        }
    )


def _from_end(c: Consumer, topic: str) -> None:
    md = c.list_topics(topic, timeout=10)
    ends = []
    for p in md.topics[topic].partitions:
        _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        ends.append(TopicPartition(topic, p, hi))
    c.assign(ends)


WARMUP_S = 5.0


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


def measure(
    s: Settings, env: dict[str, str], rate: float, seconds: float, tmp: Path
) -> dict[str, list[float]]:
    """Latencies (ms, sorted) of enriched and outlier events at a steady ``rate``."""
    procs = []
    for name in ("snapshot", "enrich"):
        with open(tmp / f"lat-{name}-{int(rate)}.log", "wb") as log:
            cmd = [sys.executable, "-m", "cli.main", "flow", name, "--no-recovery"]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log))
    enriched: dict[str, tuple[float, float]] = {}  # event id -> (arrival, processed_at)
    outliers: list[tuple[dict[str, object], float]] = []
    stop = threading.Event()
    try:
        probe = _consumer(s)
        probe.list_topics(s.topic_enriched, timeout=30)
        probe.close()
        readers = []
        for topic, kind in ((s.topic_enriched, "enriched"), (s.topic_outliers, "outlier")):
            c = _consumer(s)
            _from_end(c, topic)

            def read(c: Consumer = c, kind: str = kind) -> None:
                while not stop.is_set():
                    # wait for one message, then take what else is there without waiting: a batch
                    # consume(1000, timeout) would wait out its timeout below 1000 messages, adding up
                    # to that timeout to every latency measured
                    first = c.poll(0.05)
                    if first is None:
                        continue
                    for msg in [first, *c.consume(1000, 0)]:
                        if msg.error() is not None:
                            continue
                        now = time.time()
                        value = msg.value() or b""
                        if kind == "enriched":
                            # processing time: the enriched record's own timestamp (set when produced)
                            head = value[:120].decode(errors="replace")
                            ts_type, produced_ms = msg.timestamp()
                            if '"event_id":"' in head and ts_type:
                                eid = head.split('"event_id":"', 1)[1].split('"', 1)[0]
                                enriched[eid] = (now, produced_ms / 1000)
                        else:
                            outliers.append((orjson.loads(value), now))
                c.close()

            t = threading.Thread(target=read, daemon=True)
            t.start()
            readers.append(t)
        # One simulation: its first WARMUP_S (flows starting, caches filling) are not measured. A separate
        # warm-up fleet would not do: its cars' later event times and CDC positions would shadow this one's.
        started = time.time()
        sent_before = started + WARMUP_S
        cfg = SimConfig(  # cars report several times a wall second: scenarios end within the run
            vehicles=max(200, int(rate / 10)),
            rate=rate,
            duration=seconds + WARMUP_S,
            cdc_rate=1,
            seed=8,
            scenarios=list(SCENARIOS),
            incidents_per_scenario=25,
            ground_truth=tmp / f"lat-gt-{int(rate)}.json",
            linger_ms=2,  # as the engine's own producers: the load generator's batching is not measured
        )
        report = Simulation(cfg, s).run()
        deadline = time.time() + 30
        while time.time() < deadline and len(enriched) < report.events * 0.999:  # (warm-up ones too)
            time.sleep(0.2)
        time.sleep(1.0)  # outliers of the last events (not synchronisation: nothing waits on them)
    finally:
        stop.set()
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    created: dict[str, float] = {}
    by_device_ts: dict[tuple[str, int], float] = {}
    tel = _consumer(s, **{"enable.partition.eof": True})
    tel.subscribe([s.topic_telemetry])
    eof = 0
    parts = len(tel.list_topics(s.topic_telemetry, timeout=10).topics[s.topic_telemetry].partitions)
    while eof < parts:
        for msg in tel.consume(10_000, 1.0):
            err = msg.error()
            if err is not None:
                eof += err.code() == KafkaError._PARTITION_EOF
                continue
            at = msg.timestamp()[1] / 1000
            if at >= sent_before:
                doc = orjson.loads(msg.value() or b"{}")
                created[f"{doc['device_id']}:{doc['seq']}"] = at
                by_device_ts[(doc["device_id"], doc["ts"])] = at
    tel.close()
    lat_enriched = sorted(
        (arr - created[eid]) * 1000 for eid, (arr, _p) in enriched.items() if eid in created
    )
    to_join = sorted((p - created[eid]) * 1000 for eid, (_a, p) in enriched.items() if eid in created)
    from_join = sorted((a - p) * 1000 for eid, (a, p) in enriched.items() if eid in created)
    lat_outlier = []
    statuses: dict[str, int] = {}
    for doc, _arr in outliers:
        statuses[str(doc.get("status"))] = statuses.get(str(doc.get("status")), 0) + 1
    if not any(doc.get("status") == "resolved" for doc, _a in outliers):
        print(f"latency: outliers seen {statuses}, none resolved by an event", flush=True)
    for doc, arr in outliers:
        if doc.get("status") == "resolved":
            key = (str(doc.get("device_id")), int(doc.get("ends_at") or 0))  # type: ignore[call-overload]
            if key in by_device_ts:
                lat_outlier.append((arr - by_device_ts[key]) * 1000)
    return {
        "enriched": lat_enriched,
        "outlier": sorted(lat_outlier),
        "to_join": to_join,
        "from_join": from_join,
        "outliers_seen": [float(len(outliers))],
    }
