"""Benchmark: the enrichment flow as 1 process vs a 2-process bytewax cluster over two network namespaces.

    flock /work/wt/bench.lock python -m bench.cluster --events 200000 --vehicles 10000 --rounds 2

Needs root (network namespaces). A private Kafka broker and Redis listen on the host side of the namespaces'
bridge; the input (telemetry in 4 partitions and the snapshot) is made once. Then, alternating per round, the
flow runs to the end of the input as one process in namespace 0, and as two processes (namespace 0 and 1,
one recovery directory each) — each run with fresh output topics, state keys and history. Throughput is
counted from the first to the last enriched record written (start-up excluded), as in bench.enrich_flow.
Both runs share the machine's cores with the broker and Redis, as the figures say.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import env_for
from bench.enrich_flow import topic_span
from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from stack.netns import Lab, lab, netns_unsupported
from stack.private import private_stack
from stack.topics import create_topics, topic_specs

CLUSTER_PORT = 2101


def outputs(base: Settings, tmp: Path) -> Settings:
    token = uuid.uuid4().hex[:6]
    s = base.model_copy(
        update={
            "topic_enriched": f"{token}.enriched",
            "topic_outliers": f"{token}.outliers",
            "topic_dlq": f"{token}.dlq",
            "state_prefix": f"{token}:state:",
            "history_dir": tmp / token / "history",
        }
    )
    create_topics(s.kafka_bootstrap, topic_specs(s))
    return s


def run(hosts: Lab, s: Settings, processes: int, tmp: Path) -> tuple[float, float]:
    """(events/s over the output span, events/s over the wall time incl. start-up) of one run to EOF."""
    members = hosts.hosts[:processes]
    addresses = ";".join(f"{h.ip}:{CLUSTER_PORT}" for h in members)
    procs = []
    t0 = time.perf_counter()
    for i, host in enumerate(members):
        cmd = [sys.executable, "-m", "cli.main", "flow", "enrich", "--until-eof",
               "-r", str(tmp / s.topic_enriched / f"rec-{i}")]  # fmt: skip
        if processes > 1:
            cmd += ["-i", str(i), "-a", addresses]
        log = open(tmp / f"{s.topic_enriched}-{i}.log", "wb")  # noqa: SIM115 - closed by the child's exit
        procs.append(
            subprocess.Popen(host.command(cmd), env=env_for(s), stdout=log, stderr=subprocess.STDOUT)
        )
    try:
        for i, p in enumerate(procs):
            if p.wait() != 0:
                raise SystemExit((tmp / f"{s.topic_enriched}-{i}.log").read_text()[-3000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.perf_counter() - t0
    n, span = topic_span(s, s.topic_enriched)
    return n / max(span, 1e-3), n / wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--vehicles", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    reason = netns_unsupported()
    if reason:
        raise SystemExit(f"bench.cluster: {reason}")
    # Stopped with SIGTERM (e.g. `timeout`): unwind, so the broker, Redis and the namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    lib = (Settings().kafka_lib_dir or Settings().state_dir / "kafka" / "lib").resolve()
    with lab(2) as hosts, private_stack(tmp / "stack", hosts.host_ip, kafka_lib=lib) as services:
        token = uuid.uuid4().hex[:6]
        base = Settings(
            kafka_bootstrap=services.kafka_bootstrap,
            redis_url=services.redis_url,
            topic_telemetry=f"{token}.telemetry",
            topic_cdc_prefix=f"{token}.cdc.",
            telemetry_partitions=4,
            stream_partitions=4,
            snapshot_prefix=f"{token}:snap:",
            metrics_port=0,
        )
        create_topics(base.kafka_bootstrap, topic_specs(base))
        rate = 50_000.0
        cfg = SimConfig(vehicles=args.vehicles, rate=rate, duration=args.events / rate, cdc_rate=0,
                        ground_truth=tmp / "gt.json")  # fmt: skip
        report = Simulation(cfg, base).run()
        subprocess.run([sys.executable, "-m", "cli.main", "flow", "snapshot", "--until-eof", "--no-recovery"],
                       env=env_for(base), check=True, capture_output=True)  # fmt: skip
        print(f"input: {report.events:,} telemetry events, {args.vehicles:,} vehicles, 4 partitions")
        ratios, wall_ratios = [], []
        for r in range(args.rounds):
            one, one_wall = run(hosts, outputs(base, tmp), 1, tmp)
            two, two_wall = run(hosts, outputs(base, tmp), 2, tmp)
            ratios.append(two / one)
            wall_ratios.append(two_wall / one_wall)
            print(
                f"round {r + 1}: 1 process {one:,.0f} events/s ({one_wall:,.0f} incl. start-up); "
                f"2 processes in 2 namespaces {two:,.0f} events/s ({two_wall:,.0f}); ratio {two / one:.2f}"
            )
        median, median_wall = statistics.median(ratios), statistics.median(wall_ratios)
        print(
            f"ratio 2 namespaces / 1 process, median of {len(ratios)} rounds: {median:.2f} "
            f"(incl. start-up {median_wall:.2f})"
        )


if __name__ == "__main__":
    main()
