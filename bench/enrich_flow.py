"""Benchmark: telemetry enrichment end to end on one worker process, against a raw passthrough baseline.

    python -m bench.enrich_flow --vehicles 10000 --events 400000 [--latency-rate 5000 --latency-seconds 20]

1. The simulator publishes the CDC load and ``--events`` telemetry events to fresh topics; the snapshot flow
   loads the snapshot.
2. Baseline, same run: plain confluent-kafka consume → produce of the same messages to another topic.
3. ``enrich flow enrich --until-eof --no-recovery`` (decode, join, enriched topic, Redis state, Parquet).
   Both rates are measured from the first to the last message written (start-up excluded).
4. Latency: both flows running, the simulator at a steady ``--latency-rate``; a consumer notes when each
   enriched event arrives; latency = arrival − the telemetry record's create time (same clock).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from bench.common import bench_settings, env_for
from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from stack.topics import create_topics, topic_specs


def _consumer(s: Settings, topics: list[str]) -> Consumer:
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.subscribe(topics)
    return c


def passthrough(s: Settings, total: int) -> float:
    """Consume the telemetry topic and produce every message to a copy topic; events/s."""
    out_topic = s.topic_telemetry + ".copy"
    create_topics(s.kafka_bootstrap, [t for t in topic_specs(s) if t.name == s.topic_telemetry])
    from stack.topics import TopicSpec

    create_topics(s.kafka_bootstrap, [TopicSpec(out_topic, s.telemetry_partitions)])
    consumer = _consumer(s, [s.topic_telemetry])
    producer = Producer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "linger.ms": 2,
            "compression.type": "lz4",
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "enable.idempotence": True,
        }
    )
    n = 0
    start = None
    while n < total:
        for msg in consumer.consume(5000, 0.5):
            if msg.error() is not None:
                continue
            if start is None:
                start = time.perf_counter()
            try:
                producer.produce(out_topic, msg.value(), msg.key())
            except BufferError:
                producer.poll(0.05)
                producer.produce(out_topic, msg.value(), msg.key())
            n += 1
        producer.flush(30)  # per batch, like the flow's sink
    consumer.close()
    return n / (time.perf_counter() - (start or time.perf_counter()))


def topic_span(s: Settings, topic: str) -> tuple[int, float]:
    """(messages, seconds between the first and last record create time) of ``topic``."""
    consumer = _consumer(s, [topic])
    n, lo, hi, eof = 0, None, None, 0
    parts = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    while eof < parts:
        for msg in consumer.consume(10000, 1.0):
            err = msg.error()
            if err is not None:
                eof += err.code() == KafkaError._PARTITION_EOF
                continue
            ts = msg.timestamp()[1]
            lo = ts if lo is None else min(lo, ts)
            hi = ts if hi is None else max(hi, ts)
            n += 1
    consumer.close()
    return n, ((hi or 0) - (lo or 0)) / 1000


def _total(consumer: Consumer, topic: str) -> int:
    """Messages in ``topic`` (retried while a new topic's partitions have no leader yet)."""
    for _ in range(50):
        md = consumer.list_topics(topic, timeout=10)
        try:
            return sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in md.topics[topic].partitions
            )
        except KafkaException:
            time.sleep(0.2)
    raise RuntimeError(f"no watermarks for {topic}")


def latency(s: Settings, env: dict[str, str], rate: float, seconds: float, tmp: Path) -> list[float]:
    procs = []
    for name in ("snapshot", "enrich"):
        with open(tmp / f"{name}.log", "wb") as log:
            cmd = [sys.executable, "-m", "cli.main", "flow", name, "--no-recovery"]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log))
    try:
        consumer = Consumer(
            {"bootstrap.servers": s.kafka_bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
             "enable.auto.commit": False, "fetch.wait.max.ms": 5}
        )  # fmt: skip
        # Warm up (flows started, caches filled), wait until the flows have caught up, then read from the
        # end: only the steady state is measured.
        warm = SimConfig(
            vehicles=2000, rate=rate, duration=2, cdc_rate=1, seed=7, ground_truth=tmp / "warm.json"
        )
        Simulation(warm, s).run()
        backlog = _total(consumer, s.topic_telemetry)
        deadline = time.time() + 120
        while _total(consumer, s.topic_enriched) < backlog and time.time() < deadline:
            time.sleep(0.2)
        md = consumer.list_topics(s.topic_enriched, timeout=10)
        ends = []
        for p in md.topics[s.topic_enriched].partitions:
            _lo, hi = consumer.get_watermark_offsets(TopicPartition(s.topic_enriched, p), timeout=10)
            ends.append(TopicPartition(s.topic_enriched, p, hi))
        consumer.assign(ends)
        arrivals: dict[bytes, float] = {}
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                for msg in consumer.consume(1000, 0.1):
                    if msg.error() is None:
                        arrivals[msg.value()[:80]] = time.time()  # type: ignore[index]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        sent_before = time.time()
        cfg = SimConfig(vehicles=2000, rate=rate, duration=seconds, cdc_rate=1, seed=8,
                        ground_truth=tmp / "lat-gt.json")  # fmt: skip
        Simulation(cfg, s).run()
        deadline = time.time() + 20
        while time.time() < deadline and len(arrivals) < rate * seconds * 0.999:
            time.sleep(0.2)
        stop.set()
        reader.join()
        consumer.close()
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    # match arrivals to telemetry create times via the event id prefix of the enriched JSON
    import orjson

    tel = _consumer(s, [s.topic_telemetry])
    created: dict[str, float] = {}
    eof, parts = 0, len(tel.list_topics(s.topic_telemetry, timeout=10).topics[s.topic_telemetry].partitions)
    while eof < parts:
        for msg in tel.consume(10000, 1.0):
            err = msg.error()
            if err is not None:
                eof += err.code() == KafkaError._PARTITION_EOF
                continue
            if msg.timestamp()[1] / 1000 >= sent_before:
                doc = orjson.loads(msg.value() or b"{}")
                created[f"{doc['device_id']}:{doc['seq']}"] = msg.timestamp()[1] / 1000
    tel.close()
    print(f"latency run: {len(arrivals):,} enriched arrivals, {len(created):,} telemetry events sent")
    out = []
    for head, arrived in arrivals.items():
        text = head.decode(errors="replace")
        event_id = text.split('"event_id":"', 1)[1].split('"', 1)[0] if '"event_id":"' in text else ""
        if event_id in created:
            out.append((arrived - created[event_id]) * 1000)
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vehicles", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--latency-rate", type=float, default=5000)
    ap.add_argument("--latency-seconds", type=float, default=20)
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-enrich-"))
    s = bench_settings(state_prefix=f"b{uuid.uuid4().hex[:6]}:state:", history_dir=tmp / "history")
    env = env_for(s)
    rate = 50_000.0
    cfg = SimConfig(vehicles=args.vehicles, rate=rate, duration=args.events / rate, cdc_rate=0,
                    ground_truth=tmp / "gt.json")  # fmt: skip
    report = Simulation(cfg, s).run()
    subprocess.run([sys.executable, "-m", "cli.main", "flow", "snapshot", "--until-eof", "--no-recovery"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    base = passthrough(s, report.events)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "cli.main", "flow", "enrich", "--until-eof", "--no-recovery"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        raise SystemExit(1)
    n, span = topic_span(s, s.topic_enriched)
    flow_rate = n / max(span, 1e-3)
    print(f"events: {report.events:,} telemetry, {args.vehicles:,} vehicles; enriched out: {n:,}")
    print(f"passthrough baseline (consume -> produce): {base:,.0f} events/s")
    print(f"enrichment flow (decode, join, Kafka + Redis state + Parquet): {flow_rate:,.0f} events/s "
          f"(wall incl. start-up {report.events / wall:,.0f}/s)")  # fmt: skip
    print(f"ratio enrichment / passthrough: {flow_rate / base:.2f}")
    if not args.skip_latency:
        # fresh topics and keys, so the latency run has no backlog to work through
        ls = bench_settings(state_prefix=f"b{uuid.uuid4().hex[:6]}:state:", history_dir=tmp / "history-lat")
        lenv = env_for(ls)
        lat = latency(ls, lenv, args.latency_rate, args.latency_seconds, tmp)
        if lat:

            def pct(p: float) -> float:
                return lat[min(len(lat) - 1, int(p * len(lat)))]

            print(
                f"latency produce -> enriched at {args.latency_rate:,.0f} events/s over {len(lat):,} events: "
                f"p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {lat[-1]:.1f} ms"
            )
    _ = Any


if __name__ == "__main__":
    main()
