"""Benchmark: CDC changes/s from Kafka into the Redis snapshot, one worker process.

    python -m bench.snapshot_flow --changes 300000 [--format debezium|dms]

Produces a workload (inserts, updates, deletes, 5% redeliveries) to fresh topics, then runs
`enrich flow snapshot --until-eof --no-recovery` as a subprocess. Reports the rate over the whole run
(including the worker's start-up) and over the processing span seen in the change feed (first to last
applied batch), and checks the snapshot equals the source.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import redis

from bench.common import bench_settings, env_for, produce_all
from enrich.tables import load_model
from simulator.workload import make_workload
from stores.redis_snapshot import RedisSnapshotStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=300_000)
    ap.add_argument("--format", default="debezium", choices=["debezium", "dms"])
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument(
        "--repoint",
        type=float,
        default=1.0,
        help="share of device/child updates that point the row at another car (default: all)",
    )
    args = ap.parse_args()
    s = bench_settings()
    wl = make_workload(args.format, args.changes, keys=args.keys, repoint=args.repoint)
    produce_all(s.kafka_bootstrap, [(s.cdc_topic(t), k, v) for k, v, t in wl.messages])
    n = sum(1 for _k, v, _t in wl.messages if v is not None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "flow", "snapshot", "--until-eof", "--no-recovery"],
        env=env_for(s),
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:])
        raise SystemExit(1)
    client = redis.Redis.from_url(s.redis_url)
    feed = f"{s.snapshot_prefix}changes"
    head: Any = client.xrange(feed, count=1)
    tail: Any = client.xrevrange(feed, count=1)
    first, last = head[0][0].decode(), tail[0][0].decode()
    span = (int(last.split("-")[0]) - int(first.split("-")[0])) / 1000
    store = RedisSnapshotStore.from_settings(s, client)
    ok = all(store.rows(t) == wl.truth[t] for t in load_model(s.tables_file).tables)
    print(
        f"snapshot flow ({args.format}): {n:,} CDC messages in {wall:.2f}s wall = "
        f"{n / wall:,.0f}/s incl. start-up; "
        f"processing span {span:.2f}s = {n / max(span, 1e-3):,.0f} changes/s; snapshot equals source: {ok}"
    )
    keys = list(client.scan_iter(match=f"{s.snapshot_prefix}*", count=5000))
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])


if __name__ == "__main__":
    main()
