"""The demo's HTTP API part: start ``enrich api``, create two keys with the CLI (ops: every fleet; a partner:
the beta environment), and show what each one sees through ``/v1`` — lists, a vehicle, a silence, events."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from rich.console import Console
from rich.table import Table

from enrich.settings import Settings
from stack.procs import free_port, wait_until


def start_api(settings: Settings, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log_dir / "api.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    wait_until(up, timeout=30)
    return proc, base


def _key(console: Console, name: str, tag: str) -> str:
    cmd = ["enrich", "api", "keys", "create", "--name", name, "--tag", tag]
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", *cmd[1:], "--json"], capture_output=True, check=True
    )
    doc = orjson.loads(out.stdout)
    console.print(f"  $ {' '.join(cmd)}   -> key {doc['id']} (shown once, stored hashed)", highlight=False)
    return str(doc["key"])


def _all(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = http.get(
            "/v1/vehicles", params={**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
        )
        page.raise_for_status()
        body = page.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def _events(settings: Settings, base: str, token: str, n: int) -> list[tuple[str, str, int]]:
    """Replay the first events the change stream still holds, with Last-Event-ID (resume)."""
    first: Any = redis.Redis.from_url(settings.redis_url).xrange(f"{settings.state_prefix}changes", count=1)
    if not first:
        return []
    out: list[tuple[str, str, int]] = []
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": f"{first[0][0].decode()}.0"}
    with httpx.stream("GET", f"{base}/v1/events", headers=headers, timeout=httpx.Timeout(5, read=5)) as r:
        eid, kind = "", ""
        deadline = time.monotonic() + 5
        for line in r.iter_lines():
            if line.startswith("id: "):
                eid = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                out.append((eid, kind, int(orjson.loads(line[6:]).get("car_id", -1))))
                if len(out) >= n or time.monotonic() > deadline:
                    break
    return out


def show_api(settings: Settings, console: Console, base: str) -> None:
    console.rule(f"HTTP API v1 at {base} (OpenAPI: {base}/docs)")
    ops = _key(console, "ops", "role=ops")
    partner = _key(console, "partner-beta", "environment=beta")
    table = Table("key", "listed", "environments", "stages", "incidents", "prod car", "prod silence")
    prod_car: int | None = None
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ops}"}) as http:
        every = _all(http)
        prod_car = next((v["car_id"] for v in every if (v["car"] or {}).get("environment") == "prod"), None)
    for name, token in (("ops", ops), ("partner", partner)):
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
            items = _all(http)
            envs = Counter((v["car"] or {}).get("environment", "?") for v in items)
            stages = Counter((v["car"] or {}).get("stage", "?") for v in items)
            incidents = len(http.get("/v1/incidents", params={"limit": 500}).json()["items"])
            car = http.get(f"/v1/vehicles/{prod_car}").status_code if prod_car is not None else 0
            body = {
                "matchers": ['environment="prod"', 'alertname="headlights-left-on"'],
                "duration": "1h",
                "comment": "demo",
            }
            silence = http.post("/v1/silences", json=body).status_code
            table.add_row(
                name,
                f"{len(items):,}",
                ", ".join(f"{k} {v}" for k, v in envs.items()),
                ", ".join(f"{k} {v}" for k, v in stages.items()),
                str(incidents),
                str(car),
                str(silence),
            )
    console.print(table)
    console.print(
        f"  ops: role=ops; partner: environment=beta. prod car = GET /v1/vehicles/{prod_car}; prod silence = "
        'POST /v1/silences with environment="prod"',
        highlight=False,
    )
    console.print(
        "  the partner sees only beta vehicles not at stage prod (the seed's policies; ops may do "
        "everything); a hidden vehicle answers 404, like a missing one",
        highlight=False,
    )
    for eid, kind, car in _events(settings, base, partner, 4):
        console.print(
            f"  SSE /v1/events (partner, resumed with Last-Event-ID): id {eid}  {kind:<8} car {car}",
            highlight=False,
        )
    console.print(
        f'  try it: curl -H "Authorization: Bearer {partner}" "{base}/v1/vehicles?environment=beta&limit=3"',
        highlight=False,
        markup=False,
        emoji=False,
    )
