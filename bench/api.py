"""Benchmark of the query API on loopback: ``python -m bench.api`` (run it under the shared lock).

1. Fills a private key prefix with ``--vehicles`` state documents through the vehicle store's writer (the
   flow's one call per batch; its cost per car, with and without index upkeep, is printed too).
2. Starts ``enrich api`` (uvicorn, one process) and drives it from a loopback load generator: raw HTTP/1.1
   keep-alive connections on asyncio, open loop at ``--rate`` requests/s (latency counted from the
   scheduled send time, so a stalled server cannot hide its queueing), bounded by ``--requests`` and
   ``--seconds``.
   * GET /v1/vehicles/{id} with a key (random ids);
   * filtered lists over the whole fleet (partner key, several filter combinations, closed loop);
   * SSE fan-out: ``--sse-clients`` connections on /v1/events, then ``--sse-batches`` flow batches; the
     latency from the write to the event's arrival at every client.
Everything it writes is deleted at the end. Targets (issue 13): GET p99 <= 5 ms at >= 2,000 req/s; list
p99 <= 50 ms over 100k vehicles; SSE to 1,000 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis

from enrich.settings import Settings
from stack.procs import free_port, wait_until
from stores.vehicles import VehicleStateWrite
from stores.vehicles.redis_writer import RedisVehicleWriter

FLEETS = ("seoul-central", "seoul-gangnam", "busan", "incheon-airport")
MODELS = ("Hyundai Avante", "Kia Ray", "Kia Niro EV", "Hyundai Ioniq 5", "Tesla Model 3", "Renault Zoe")


def doc(car: int, version: int, now: int, signals: int = 2) -> dict[str, Any]:
    i = car - 1000
    env = "beta" if i % 4 == 3 else "prod"
    row = {
        "car_id": car,
        "plate": f"P{car}",
        "model": MODELS[i % 6],
        "fleet": FLEETS[(i // 7) % 4],
        "status": "MAINTENANCE" if i % 17 == 0 else "ACTIVE",
        "zone": f"Z{i % 40:02d}",
        "environment": env,
        "stage": "prod" if env == "prod" or i % 20 == 3 else "pilot",
        "updated_at": now,
    }
    sig = {"value": 40.0 + i % 30, "ts": now, "seq": version, "device_id": f"dev-{car}"}
    return {
        "car_id": car,
        "last_seen": now - (i % 3600) * 1000,
        "location": {"lat": 37.45 + (i % 200) / 1000, "lon": 126.85 + (i % 300) / 1000},
        "signals": {
            "Vehicle.Speed": sig,
            **{f"Vehicle.Signal{n}.Value": dict(sig) for n in range(signals - 1)},
        },
        "car": row,
        "reservation": None,
        "devices": [f"dev-{car}"],
        "updated_at": now,
        "version": version,
    }


def fill(s: Settings, vehicles: int, batch: int) -> dict[str, float]:
    """Write every car in batches, as the enrichment flow's state sink does: new (first write), then
    telemetry-only updates (the steady state) without and with the document's dict; then the same updates
    as the plain MSET the sink did before the indexes. µs per car for each; documents carry 25 signals
    (about 2.5 KB, like the simulator's)."""
    client = redis.Redis.from_url(s.redis_url)
    writer = RedisVehicleWriter(client, s.state_prefix)
    now = int(time.time() * 1000)
    cars = list(range(1000, 1000 + vehicles))
    out: dict[str, float] = {}

    def timed(label: str, version: int, with_doc: bool) -> dict[int, bytes]:
        docs = {c: doc(c, version, now, signals=25) for c in cars}
        encoded = {c: orjson.dumps(d) for c, d in docs.items()}
        start = time.perf_counter()
        for i in range(0, len(cars), batch):
            part = cars[i : i + batch]
            writer.write_batch(
                {c: VehicleStateWrite(encoded[c], docs[c] if with_doc else None) for c in part}
            )
        out[label] = (time.perf_counter() - start) / vehicles * 1e6
        return encoded

    timed("first_write_us_per_car", 1, False)
    timed("update_us_per_car", 2, False)
    encoded = timed("update_with_doc_us_per_car", 3, True)
    plain_prefix = s.state_prefix + "plain:"
    start = time.perf_counter()
    for i in range(0, len(cars), batch):
        client.mset({f"{plain_prefix}car:{c}": encoded[c] for c in cars[i : i + batch]})
    out["plain_mset_us_per_car"] = (time.perf_counter() - start) / vehicles * 1e6
    return out


def create_key(s: Settings, name: str, tags: dict[str, str]) -> str:
    import redis.asyncio as aioredis

    from stores.apikeys import RedisApiKeyStore

    async def go() -> str:
        client = aioredis.Redis.from_url(s.redis_url)
        try:
            return (await RedisApiKeyStore(client, s.api_prefix).create(name, tags))[1]
        finally:
            await client.aclose()

    return asyncio.run(go())


@contextlib.contextmanager
def api_server(s: Settings, log: Path, workers: int = 1) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, **s.as_env()}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def up() -> bool:
        import socket

        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return proc.poll() is not None

    try:
        wait_until(up, timeout=30)
        if proc.poll() is not None:
            raise SystemExit(f"API did not start: {log.read_text()[-2000:]}")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Conn:
    """One keep-alive HTTP/1.1 connection with a minimal response reader."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def get(self, path: str, token: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length)
        return status, body


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


async def open_loop(
    port: int, token: str, paths: list[str], rate: float, count: int, seconds: float, conns: int
) -> dict[str, float]:
    """Send ``count`` requests at ``rate``/s (scheduled times), over ``conns`` connections."""
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await Conn.open(port))
    lat: list[float] = []
    errors = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def one(i: int, due: float) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            status, _ = await conn.get(paths[i % len(paths)], token)
            if status != 200:
                errors += 1
            lat.append(time.perf_counter() - due)
        finally:
            pool.put_nowait(conn)

    tasks = []
    for i in range(count):
        due = start + i / rate
        now = time.perf_counter()
        if due > deadline:
            break
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    return {
        "requests": len(lat),
        "achieved_rps": len(lat) / wall,
        "errors": errors,
        "p50_ms": pct(lat, 0.5) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "max_ms": max(lat) * 1e3,
    }


async def closed_loop(port: int, token: str, paths: list[str], count: int, seconds: float) -> dict[str, Any]:
    conn = await Conn.open(port)
    lat: list[float] = []
    items = 0
    deadline = time.perf_counter() + seconds
    for i in range(count):
        if time.perf_counter() > deadline:
            break
        t = time.perf_counter()
        status, body = await conn.get(paths[i % len(paths)], token)
        lat.append(time.perf_counter() - t)
        assert status == 200, body[:300]
        items += len(orjson.loads(body)["items"])
    return {
        "requests": len(lat),
        "items_per_page": items / max(1, len(lat)),
        "p50_ms": pct(lat, 0.5) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "max_ms": max(lat) * 1e3,
    }


async def sse_fanout(
    s: Settings, port: int, token: str, clients: int, batches: int, cars_per_batch: int, seconds: float
) -> dict[str, float]:
    """``clients`` SSE connections on /v1/events?fleet=busan; each batch rewrites cars of that fleet; the
    event of a car is stamped with its write time (in the document's updated_at)."""
    conns = []
    for _ in range(clients):
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        request = f"GET /v1/events?fleet=busan HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n"
        w.write(request.encode())
        conns.append((r, w))
    for r, _w in conns:
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
    lat: list[float] = []
    got = [0] * clients
    expected = batches * cars_per_batch

    async def read(i: int, r: asyncio.StreamReader) -> None:
        while got[i] < expected:
            line = await r.readline()
            if line.startswith(b"data: {"):
                d = orjson.loads(line[6:])
                if "updated_at" in d:
                    lat.append(time.time() - d["updated_at"] / 1000)
                    got[i] += 1

    readers = [asyncio.create_task(read(i, r)) for i, (r, _w) in enumerate(conns)]
    await asyncio.sleep(1.0)  # every client registered with the broker
    writer = RedisVehicleWriter(redis.Redis.from_url(s.redis_url), s.state_prefix)
    busan = [c for c in range(1000, 1400) if FLEETS[((c - 1000) // 7) % 4] == "busan"][:cars_per_batch]
    start = time.perf_counter()
    for b in range(batches):
        now = int(time.time() * 1000)
        writer.write_batch(
            {c: VehicleStateWrite(orjson.dumps({**doc(c, 10 + b, now), "updated_at": now})) for c in busan}
        )
        await asyncio.sleep(0.2)
    _done, pending = await asyncio.wait(readers, timeout=seconds)
    for t in pending:
        t.cancel()
    for _r, w in conns:
        w.close()
    delivered = sum(got)
    return {
        "clients": clients,
        "events_expected": expected * clients,
        "events_delivered": delivered,
        "p50_ms": pct(lat, 0.5) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "max_ms": max(lat or [0]) * 1e3,
        "wall_s": time.perf_counter() - start,
    }


def cleanup(s: Settings) -> None:
    client = redis.Redis.from_url(s.redis_url)
    for prefix in (s.state_prefix, s.api_prefix):
        batch = []
        for k in client.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(k)
            if len(batch) >= 5000:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2000, help="cars per flow batch when filling")
    ap.add_argument("--rate", type=float, default=2000.0, help="GET requests per second (open loop)")
    ap.add_argument("--requests", type=int, default=20_000, help="GET requests at most")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--list-requests", type=int, default=600)
    ap.add_argument("--sse-clients", type=int, default=1000)
    ap.add_argument("--sse-batches", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=30.0, help="time bound of each phase")
    ap.add_argument("--api-workers", type=int, default=1, help="API server processes")
    args = ap.parse_args()
    token = f"ba{uuid.uuid4().hex[:6]}"
    s = Settings().model_copy(update={"state_prefix": f"{token}:state:", "api_prefix": f"{token}:api:"})
    results: dict[str, Any] = {}
    try:
        results["fill"] = fill(s, args.vehicles, args.batch)
        ops = create_key(s, "bench-ops", {"role": "ops"})
        partner = create_key(s, "bench-partner", {"environment": "beta"})
        log = Path(s.state_dir) / "logs" / f"bench-api-{token}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with api_server(s, log, args.api_workers) as port:
            rng = random.Random(1)
            ids = [f"/v1/vehicles/{rng.randrange(1000, 1000 + args.vehicles)}" for _ in range(5000)]
            asyncio.run(
                open_loop(port, ops, ids, args.rate, min(2000, args.requests), 5, args.connections)
            )  # warm
            results["get_by_id"] = asyncio.run(
                open_loop(port, ops, ids, args.rate, args.requests, args.seconds, args.connections)
            )
            lists = [
                "/v1/vehicles?limit=50",
                "/v1/vehicles?fleet=busan&limit=50",
                "/v1/vehicles?status=MAINTENANCE&limit=50",
                "/v1/vehicles?model=Kia%20Ray&fleet=busan&limit=100",
                "/v1/vehicles?last_seen_before=" + str(int(time.time() * 1000) - 3_000_000) + "&limit=50",
                "/v1/vehicles?bbox=37.45,126.85,37.5,126.9&limit=50",
            ]
            results["list_partner"] = asyncio.run(
                closed_loop(port, partner, lists, args.list_requests, args.seconds)
            )
            results["list_ops"] = asyncio.run(closed_loop(port, ops, lists, args.list_requests, args.seconds))
            results["sse"] = asyncio.run(
                sse_fanout(s, port, ops, args.sse_clients, args.sse_batches, 20, args.seconds)
            )
    finally:
        cleanup(s)
    print(
        orjson.dumps(
            {"vehicles": args.vehicles, "api_workers": args.api_workers, **results},
            option=orjson.OPT_INDENT_2,
        ).decode()
    )


if __name__ == "__main__":
    main()
