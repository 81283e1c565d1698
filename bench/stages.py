"""The enrichment flow's stage budget: CPU microseconds per event of each stage, measured in one process
(CPU time, not wall time, so other work on a shared machine does not inflate it).

    python -m bench.stages [--vehicles 10000 --events 200000]     (or from bench.enrich_flow)

Runs the flow's own core classes (``enrich.pipeline``) over the same telemetry the flow benchmark reads,
stage by stage, each over the whole input: consume (Kafka → records), decode, join (snapshot lookup and
grouping), encode (the enriched JSON), fold (latest state incl. its JSON, rules off), rules (the default
pack: fold with rules minus fold without), history (Parquet), produce (Kafka, enriched messages),
state write (Redis MSET). Their sum, next to the flow's own rate, shows what the bytewax runtime and the
rest cost.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError

from connectors.kafka_writer import KafkaWriter
from enrich.asof import Timeline
from enrich.pipeline.join import JoinBatch, JoinCore
from enrich.pipeline.state import BucketInput, StateCore
from enrich.records import Record
from enrich.rules.engine import RuleEngine
from enrich.rules.model import load_rules
from enrich.settings import Settings
from stack.topics import TopicSpec, create_topics
from stores.parquet_history import HistoryWriter
from stores.redis_snapshot import RedisSnapshotStore
from stores.snapshot_cache import CachedSnapshot

BATCH = 5000
BUCKETS = 16


def read_records(s: Settings) -> tuple[list[Record], float]:
    """Every telemetry record, and the seconds the consumer took."""
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"stages-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.subscribe([s.topic_telemetry])
    parts = len(c.list_topics(s.topic_telemetry, timeout=10).topics[s.topic_telemetry].partitions)
    out: list[Record] = []
    eof, start = 0, None
    while eof < parts:
        for m in c.consume(10_000, 1.0):
            err = m.error()
            if err is not None:
                eof += err.code() == KafkaError._PARTITION_EOF
                continue
            if start is None:
                start = time.process_time()
            ts = m.timestamp()
            topic, part, off = m.topic(), m.partition(), m.offset()
            assert topic is not None and part is not None and off is not None
            out.append(Record(topic, part, off, m.key(), m.value(), ts[1] if ts[0] else None))
    took = time.process_time() - (start or time.process_time())
    c.close()
    return out, took


def _batches(records: list[Record]) -> list[list[Record]]:
    per: dict[int, list[Record]] = {}
    for r in records:
        per.setdefault(r.partition, []).append(r)
    out = []
    for recs in per.values():
        out += [recs[i : i + BATCH] for i in range(0, len(recs), BATCH)]
    return out


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def budget(s: Settings, records: list[Record] | None = None) -> dict[str, float]:
    """Microseconds per event of each stage (and the event count under ``events``)."""
    consume_s = 0.0
    if records is None:
        records, consume_s = read_records(s)
    n = len(records)
    batches = _batches(records)
    client = redis.Redis.from_url(s.redis_url)
    cache = CachedSnapshot(RedisSnapshotStore.from_settings(s, client))

    def lookup(ids: Collection[str]) -> Mapping[str, Timeline | None]:
        return cache.lookup(ids)

    now = int(time.time() * 1000)
    JoinCore(lookup).process(records, now, final=True)  # warm the snapshot cache
    core = JoinCore(lookup)
    joined_batches: list[JoinBatch] = [core.process(b, now, final=True) for b in batches]
    jt = core.times

    def inputs() -> list[list[tuple[int, BucketInput]]]:
        per_batch = []
        for jb in joined_batches:
            buckets: dict[int, dict[int, Any]] = {}
            for car, ce in jb.cars.items():
                buckets.setdefault(car % BUCKETS, {})[car] = ce
            per_batch.append(
                [(b, BucketInput(cars, jb.part_key, jb.progress)) for b, cars in buckets.items()]
            )
        return per_batch

    def fold(engine: RuleEngine) -> tuple[float, list[dict[int, bytes]], float]:
        cores = [StateCore(engine, lookup) for _ in range(BUCKETS)]
        prepared = inputs()
        start = time.process_time()
        written = []
        for items in prepared:
            for b, inp in items:
                written.append(cores[b].process(inp, now).states)
        return time.process_time() - start, written, sum(c.encode_s for c in cores)

    # the flow's garbage-collector settings (flows/runner.py), so the stages cost what they cost there
    gc.set_threshold(200_000, 50, 1000)
    gc.collect()
    gc.freeze()
    fold_s, states, encode_doc_s = fold(RuleEngine([]))
    rules_s, _, _ = fold(RuleEngine(load_rules(None)))
    with tempfile.TemporaryDirectory() as tmp:
        writer = HistoryWriter(Path(tmp))
        history_s, _ = _timed(
            lambda: [writer.write(jb.topic, jb.partition, jb.records, jb.history) for jb in joined_batches]
        )
    scratch = s.topic_enriched + ".stages"
    create_topics(s.kafka_bootstrap, [TopicSpec(scratch, s.stream_partitions)])
    producer = KafkaWriter.from_settings(s, scratch, stage="bench.stages")  # the flows' writer

    def produce() -> None:
        for jb in joined_batches:
            producer.send(list(zip(jb.keys, jb.bodies, strict=True)))
        producer.flush()

    produce_s, _ = _timed(produce)
    prefix = f"stages{uuid.uuid4().hex[:6]}:car:"

    def write_states() -> None:
        for batch in states:
            if batch:
                client.mset({f"{prefix}{car}": body for car, body in batch.items()})

    mset_s, _ = _timed(write_states)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    us = 1e6 / max(n, 1)
    return {
        "events": float(n),
        "consume": consume_s * us,
        "decode": jt.decode * us,
        "join": jt.lookup * us,
        "encode+group": jt.emit * us,
        "fold": (fold_s - encode_doc_s) * us,
        "state JSON": encode_doc_s * us,
        "rules": max(rules_s - fold_s, 0.0) * us,
        "history": history_s * us,
        "produce": produce_s * us,
        "state write": mset_s * us,
    }


def render(stages: dict[str, float], flow_rate: float | None = None) -> str:
    lines = ["stage budget (us per event, one process, same input):"]
    total = 0.0
    for name, us in stages.items():
        if name == "events":
            continue
        total += us
        lines.append(f"  {name:<12} {us:6.2f}")
    lines.append(f"  {'sum':<12} {total:6.2f}   (= {1e6 / total:,.0f} events/s if nothing else cost)")
    if flow_rate:
        flow_us = 1e6 / flow_rate
        lines.append(
            f"  {'flow':<12} {flow_us:6.2f}   measured; runtime and the rest: {flow_us - total:+.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    from bench.common import bench_settings
    from simulator.run import SimConfig, Simulation

    ap = argparse.ArgumentParser()
    ap.add_argument("--vehicles", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    s = bench_settings()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    cfg = SimConfig(
        vehicles=args.vehicles,
        rate=50_000,
        duration=args.events / 50_000,
        cdc_rate=0,
        ground_truth=tmp / "gt.json",
    )
    Simulation(cfg, s).run()
    import subprocess
    import sys

    from bench.common import env_for

    subprocess.run(
        [sys.executable, "-m", "cli.main", "flow", "snapshot", "--until-eof", "--no-recovery"],
        env=env_for(s),
        check=True,
        capture_output=True,
    )
    print(render(budget(s)))


if __name__ == "__main__":
    main()
