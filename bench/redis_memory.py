"""Redis memory per vehicle: a fleet filled through the real flows, on one instance and on a Redis Cluster.

    python -m bench.redis_memory --vehicles 10000 [--events-per-vehicle 5]

1. A private ``redis-server`` and a private three-master Redis Cluster (Debian's, on free ports, in a
   temporary directory; nothing shared is measured).
2. The simulator publishes the CDC load of ``--vehicles`` cars (2 devices each, with reservations) and
   telemetry (every car reports, some headlights incidents) to fresh topics of the running broker.
3. One instance: ``used_memory`` (INFO memory) empty, after the snapshot flow, after the enrichment flow —
   the snapshot store, then the vehicle store (state documents, indexes, incidents, change stream).
4. Cluster: when the snapshot store works on a cluster, the same two flows against it; otherwise the
   vehicle store's part alone: the state documents and outlier events the flow produced on the single
   instance are written to the cluster by the flow's own writer (``RedisVehicleWriter``, batches of 500),
   and the memory added per master is reported (documents spread over the masters, indexes in one slot).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.common import bench_settings, env_for
from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from stack.procs import free_port, wait_until
from stack.redis_cluster import RedisClusterStack
from stack.redis_server import RedisServer, redis_answers
from stores.redis_client import cluster_url
from stores.vehicles import VehicleStateWrite
from stores.vehicles.redis_writer import RedisVehicleWriter
from tests.kafka_util import consume_all

BATCH = 500


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def cluster_used(url: str) -> dict[str, int]:
    plain = cluster_url(url)
    assert plain is not None
    cluster: Any = redis.RedisCluster.from_url(plain)
    try:
        return {node.name: used(cluster.get_redis_connection(node)) for node in cluster.get_primaries()}
    finally:
        cluster.close()


def split(single: redis.Redis, s: Settings, cars: int) -> tuple[float, float]:
    """(documents, everything else) of the vehicle store in bytes: ``MEMORY USAGE`` of every key but the
    documents, and of 500 documents scaled to the fleet."""
    docs, other = 0, 0
    sampled = 0
    for key in single.scan_iter(match=f"{s.state_prefix}*", count=5000):
        if b":car:" in key:
            if sampled < 500:
                docs += int(single.memory_usage(key, samples=0) or 0)
                sampled += 1
        else:
            other += int(single.memory_usage(key, samples=0) or 0)
    return docs * cars / max(sampled, 1), float(other)


def run_flow(name: str, s: Settings) -> None:
    subprocess.run([sys.executable, "-m", "cli.main", "flow", name, "--until-eof", "--no-recovery"],
                   env=env_for(s), check=True, capture_output=True)  # fmt: skip


def snapshot_store_on_cluster(url: str) -> bool:
    """Does the snapshot store work on a cluster yet (its Lua scripts route to the slot of their keys)?"""
    from enrich.tables import DEFAULT_MODEL
    from stores.redis_client import redis_client
    from stores.redis_snapshot import RedisSnapshotStore

    store = RedisSnapshotStore(
        redis_client(Settings(), url), DEFAULT_MODEL, prefix=f"p{uuid.uuid4().hex[:6]}:"
    )
    try:
        for i in range(8):  # a keyless script lands on a random master: eight tries expose it
            store.lookup({f"probe-{i}-{j}" for j in range(4)})
        return True
    except redis.RedisError:
        return False


def copy_state(single: redis.Redis, s: Settings, url: str) -> int:
    """Write the flow's state documents (batches of ``BATCH``, as the sink does) and its outlier events to
    the cluster with the flow's writer. Returns the number of cars."""
    from stores.redis_client import redis_client

    writer = RedisVehicleWriter(redis_client(s, url), s.state_prefix)
    keys = sorted(single.scan_iter(match=f"{s.state_prefix}car:*", count=5000))
    for i in range(0, len(keys), BATCH):
        part = keys[i : i + BATCH]
        bodies: list[Any] = single.mget(part)
        cars = [int(k.decode().rsplit(":", 1)[1]) for k in part]
        writer.write_batch({c: VehicleStateWrite(b) for c, b in zip(cars, bodies, strict=True)})
    writer.write_batch({}, [m.value() or b"" for m in consume_all(s.kafka_bootstrap, [s.topic_outliers])])
    return len(keys)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vehicles", type=int, default=10_000)
    ap.add_argument("--events-per-vehicle", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    server = RedisServer(tmp / "redis", port=free_port())
    cluster = RedisClusterStack(tmp / "cluster")
    single_url = f"redis://127.0.0.1:{server.port}/0"
    try:
        server.start()
        cluster.start()
        assert wait_until(lambda: redis_answers(single_url), 30)
        s = bench_settings(redis_url=single_url, state_prefix=f"b{uuid.uuid4().hex[:6]}:state:",
                           history_dir=tmp / "history")  # fmt: skip
        rate = 20_000.0
        seconds = args.vehicles * args.events_per_vehicle / rate
        cfg = SimConfig(vehicles=args.vehicles, rate=rate, duration=seconds, cdc_rate=0,
                        scenarios=["headlights-left-on"], ground_truth=tmp / "gt.json")  # fmt: skip
        report = Simulation(cfg, s).run()
        single = redis.Redis.from_url(single_url)
        empty = used(single)
        run_flow("snapshot", s)
        after_snap = used(single)
        run_flow("enrich", s)
        after_state = used(single)
        cars = sum(1 for _ in single.scan_iter(match=f"{s.state_prefix}car:*", count=5000))
        per = 10_000 / max(cars, 1) / 1024 / 1024
        print(f"fleet: {args.vehicles:,} vehicles ({cars:,} with a state), {report.events:,} events")
        print(f"one instance: snapshot store {(after_snap - empty) * per:.1f} MiB per 10k vehicles, "
              f"vehicle store {(after_state - after_snap) * per:.1f} MiB, "
              f"total {(after_state - empty) * per:.1f} MiB (used_memory deltas)")  # fmt: skip
        docs, other = split(single, s, cars)
        print(f"vehicle store by MEMORY USAGE: state documents {docs * per:.1f} MiB, indexes + incidents + "
              f"change stream {other * per:.1f} MiB per 10k vehicles")  # fmt: skip
        before = cluster_used(cluster.url)
        if snapshot_store_on_cluster(cluster.url):
            sc = s.model_copy(update={"redis_url": cluster.url})
            run_flow("snapshot", sc)
            run_flow("enrich", sc)
            what = "both stores, filled by the flows"
        else:
            copy_state(single, s, cluster.url)
            what = (
                "vehicle store only (snapshot store not cluster-ready): the flow's documents, flow's writer"
            )
        after = cluster_used(cluster.url)
        deltas = {n: after[n] - before[n] for n in after}
        total = sum(deltas.values())
        spread = ", ".join(f"{n} {d * per:.1f}" for n, d in sorted(deltas.items()))
        print(f"cluster ({what}): {total * per:.1f} MiB per 10k vehicles; per master MiB: {spread}")
        print(orjson.dumps({"single": {"snapshot": after_snap - empty, "state": after_state - after_snap},
                            "cluster": deltas, "cars": cars}).decode())  # fmt: skip
    finally:
        server.process.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
