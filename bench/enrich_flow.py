"""Benchmark: telemetry enrichment end to end on one worker process, against a raw passthrough baseline.

    python -m bench.enrich_flow --vehicles 10000 --events 300000 [--skip cluster,stages,latency,idle]

1. The simulator publishes the CDC load and ``--events`` telemetry events to fresh topics; the snapshot flow
   loads the snapshot.
2. Baseline, same run: plain confluent-kafka consume → produce of the same messages to another topic.
3. ``enrich flow enrich --until-eof --no-recovery`` (decode, join, enriched topic, Redis state, Parquet).
   Both rates are measured from the first to the last message written (start-up excluded).
4. The same input through a 2-process bytewax cluster on this machine (``cluster``).
5. The stage budget: each stage's cost per event in one process (``bench.stages``).
6. Latency at steady rates (``bench.latency``): produce → enriched and produce → outlier.
7. Idle CPU of a worker holding 1,000 and 1,000,000 vehicles (``bench.idle``).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from bench.common import bench_settings, env_for
from connectors.kafka_writer import KafkaWriter
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


def passthrough(s: Settings, total: int, tag: str = "") -> tuple[float, float]:
    """Consume the telemetry topic and produce every message to a copy topic: (events/s, CPU µs per event
    of this process, librdkafka's threads included)."""
    out_topic = f"{s.topic_telemetry}.copy{tag}"
    from stack.topics import TopicSpec

    create_topics(s.kafka_bootstrap, [TopicSpec(out_topic, s.telemetry_partitions)])
    consumer = _consumer(s, [s.topic_telemetry])
    producer = KafkaWriter.from_settings(s, out_topic, stage="bench.passthrough")  # the flows' writer
    n = 0
    start = None
    cpu0 = time.process_time()
    while n < total:
        for msg in consumer.consume(5000, 0.5):
            if msg.error() is not None:
                continue
            if start is None:
                start = time.perf_counter()
            producer.send_to(out_topic, msg.key(), msg.value())
            n += 1
        producer.flush()  # per batch, like the flow's sink
    rate = n / (time.perf_counter() - (start or time.perf_counter()))
    cpu = (time.process_time() - cpu0) / max(n, 1) * 1e6
    consumer.close()
    return rate, cpu


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


def run_flow(env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "cli.main", "flow", "enrich", "--until-eof", "--no-recovery", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def cluster_rate(s: Settings, processes: int) -> float:
    """The same input through ``processes`` worker processes (a bytewax cluster on this machine), into
    their own output topic and state prefix; events/s over the output's span."""
    from stack.procs import free_port

    token = uuid.uuid4().hex[:6]
    cs = s.model_copy(
        update={
            "topic_enriched": f"{s.topic_enriched}.c{token}",
            "state_prefix": f"c{token}:state:",
            "history_dir": Path(tempfile.mkdtemp()),
        }
    )
    create_topics(cs.kafka_bootstrap, [t for t in topic_specs(cs) if t.name == cs.topic_enriched])
    env = env_for(cs)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs = [run_flow(env, "-i", str(i), "-a", addresses) for i in range(processes)]
    for p in procs:
        _out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(err[-3000:])
    n, span = topic_span(cs, cs.topic_enriched)
    return n / max(span, 1e-3)


def main() -> None:
    from bench import idle, latency, stages

    ap = argparse.ArgumentParser()
    ap.add_argument("--vehicles", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--latency-rates", default="1000,5000,20000", help="steady rates for the latency runs")
    ap.add_argument("--latency-seconds", type=float, default=15)
    ap.add_argument("--idle-vehicles", default="1000,1000000", help="fleet sizes for the idle CPU figure")
    ap.add_argument("--idle-seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved passthrough/flow rounds")
    ap.add_argument("--skip", default="", help="comma-separated: cluster,stages,latency,idle")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="bench-enrich-"))
    s = bench_settings(state_prefix=f"b{uuid.uuid4().hex[:6]}:state:", history_dir=tmp / "history")
    env = env_for(s)
    rate = 50_000.0
    cfg = SimConfig(
        vehicles=args.vehicles,
        rate=rate,
        duration=args.events / rate,
        cdc_rate=0,
        ground_truth=tmp / "gt.json",
    )
    report = Simulation(cfg, s).run()
    subprocess.run(
        [sys.executable, "-m", "cli.main", "flow", "snapshot", "--until-eof", "--no-recovery"],
        env=env,
        check=True,
        capture_output=True,
    )
    rounds = []
    for i in range(args.rounds):  # interleaved: a shared machine's speed drifts between minutes
        base, base_cpu = passthrough(s, report.events, f"{i}")
        rs = s.model_copy(
            update={
                "topic_enriched": f"{s.topic_enriched}.r{i}",
                "state_prefix": f"r{i}{s.state_prefix}",
                "history_dir": tmp / f"history-r{i}",
            }
        )
        create_topics(rs.kafka_bootstrap, [t for t in topic_specs(rs) if t.name == rs.topic_enriched])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = run_flow(env_for(rs))
        _out, err = proc.communicate(timeout=900)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            print(err[-4000:])
            raise SystemExit(1)
        n, span = topic_span(rs, rs.topic_enriched)
        flow_rate = n / max(span, 1e-3)
        flow_cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / max(n, 1) * 1e6
        rounds.append((flow_rate / base, base, flow_rate, base_cpu, flow_cpu, report.events / wall, n))
        print(
            f"round {i + 1}: passthrough {base:,.0f}/s, enrichment {flow_rate:,.0f}/s, ratio "
            f"{flow_rate / base:.2f}; CPU per event: passthrough {base_cpu:.1f} us, flow {flow_cpu:.1f} us "
            f"(whole process incl. start-up)",
            flush=True,
        )
    ratio, base, flow_rate, base_cpu, flow_cpu, with_startup, n = sorted(rounds)[len(rounds) // 2]
    lines = [
        f"events: {report.events:,} telemetry, {args.vehicles:,} vehicles; enriched out: {n:,}",
        f"median of {len(rounds)} interleaved rounds: passthrough (consume -> produce) {base:,.0f} events/s; "
        f"enrichment flow, rules on, 1 process: {flow_rate:,.0f} events/s "
        f"(incl. start-up {with_startup:,.0f}/s); "
        f"ratio {ratio:.2f} (rounds: {', '.join(f'{r[0]:.2f}' for r in rounds)})",
        f"CPU per event, same round: passthrough {base_cpu:.1f} us, enrichment flow {flow_cpu:.1f} us",
    ]
    print("\n".join(lines), flush=True)
    if "cluster" not in skip:
        two = cluster_rate(s, 2)
        lines.append(
            f"enrichment flow, 2 processes (bytewax cluster on this host): {two:,.0f} events/s; "
            f"{two / flow_rate:.2f}x one process, {two / base:.2f} of passthrough"
        )
        print(lines[-1], flush=True)
    if "stages" not in skip:
        lines.append(stages.render(stages.budget(s), flow_rate))
        print(lines[-1], flush=True)
    if "latency" not in skip:
        for r in (float(x) for x in args.latency_rates.split(",") if x):
            ls = bench_settings(
                state_prefix=f"b{uuid.uuid4().hex[:6]}:state:", history_dir=tmp / f"lat{int(r)}"
            )
            lat = latency.measure(ls, env_for(ls), r, args.latency_seconds, tmp)
            e, o = lat["enriched"], lat["outlier"]
            lines.append(
                f"latency at {r:,.0f} events/s: produce->enriched p50 {latency.pct(e, 0.5):.1f} ms, "
                f"p99 {latency.pct(e, 0.99):.1f} ms (n={len(e):,}); produce->outlier p50 "
                f"{latency.pct(o, 0.5):.1f} ms, p99 {latency.pct(o, 0.99):.1f} ms (n={len(o)}); of which "
                f"in the flow (created -> enriched produced) p50 {latency.pct(lat['to_join'], 0.5):.1f}, "
                f"p99 {latency.pct(lat['to_join'], 0.99):.1f} ms, delivery (produced -> consumed) p50 "
                f"{latency.pct(lat['from_join'], 0.5):.1f}, p99 {latency.pct(lat['from_join'], 0.99):.1f} ms"
            )
            print(lines[-1], flush=True)
    if "idle" not in skip:
        sizes = [int(x) for x in args.idle_vehicles.split(",") if x]
        cpu = {}
        for size in sizes:
            ids = bench_settings(
                state_prefix=f"b{uuid.uuid4().hex[:6]}:state:", history_dir=tmp / f"idle{size}"
            )
            cpu[size] = idle.measure(ids, env_for(ids), size, args.idle_seconds, tmp)
        text = ", ".join(f"{size:,} vehicles {100 * c:.2f}% of a core" for size, c in cpu.items())
        ratio = cpu[sizes[-1]] / max(cpu[sizes[0]], 1e-9)
        lines.append(f"idle CPU of a worker: {text}; ratio {ratio:.2f}")
        print(lines[-1], flush=True)
    print("\n== summary ==\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
