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


def show_vehicle(console: Console, base: str, token: str, car: int) -> None:
    """One vehicle through the API, as a client reads it: 200 with its ETag, then 304 for If-None-Match."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        first = http.get(f"/v1/vehicles/{car}")
        etag = first.headers.get("etag", "")
        again = http.get(f"/v1/vehicles/{car}", headers={"If-None-Match": etag}) if etag else None
    console.print(f"  $ curl -si -H 'Authorization: Bearer …' {base}/v1/vehicles/{car}", highlight=False,
                  markup=False)  # fmt: skip
    console.print(f"  {first.status_code} {first.reason_phrase}  ETag: {etag or '-'}", highlight=False,
                  markup=False)  # fmt: skip
    if first.status_code == 200:
        body = first.json()
        signals = body.get("signals") or {}
        shown = {
            "car_id": body["car_id"],
            "car": {k: (body.get("car") or {}).get(k) for k in ("model", "fleet", "environment", "stage")},
            "reservation": {
                k: (body.get("reservation") or {}).get(k) for k in ("reservation_id", "customer_email")
            },
            "last_seen": body.get("last_seen"),
            "location": body.get("location"),
            "signals": {k: signals[k]["value"] for k in list(signals)[:4]} | {"…": f"{len(signals)} signals"},
            "active_incidents": [i["rule_id"] for i in body.get("active_incidents") or []],
            "version": body.get("version"),
        }
        console.print_json(orjson.dumps(shown).decode())
    if again is not None:
        console.print(f"  again with If-None-Match: {etag} -> {again.status_code} {again.reason_phrase} "
                      "(nothing changed: no body)", highlight=False, markup=False)  # fmt: skip


def show_api(settings: Settings, console: Console, base: str, car: int | None) -> dict[str, str]:
    """Keys made with the CLI, one vehicle with its ETag, what each key sees, events. Returns the keys."""
    console.rule(f"HTTP API v1 at {base} (OpenAPI: {base}/docs)")
    ops = _key(console, "ops", "role=ops")
    partner = _key(console, "partner-beta", "environment=beta")
    if car is not None:
        show_vehicle(console, base, ops, car)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ops}"}) as http:
        every = _all(http)
        prod_car = next((v["car_id"] for v in every if (v["car"] or {}).get("environment") == "prod"), None)
    seen: dict[str, list[str]] = {"vehicles listed": [], "environments": [], "stages": [], "incidents": [],
                                  f"GET prod car {prod_car}": [], "POST silence for prod": []}  # fmt: skip
    for token in (ops, partner):
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
            items = _all(http)
            envs = Counter((v["car"] or {}).get("environment", "?") for v in items)
            stages = Counter((v["car"] or {}).get("stage", "?") for v in items)
            incidents = len(http.get("/v1/incidents", params={"limit": 500}).json()["items"])
            car_status = http.get(f"/v1/vehicles/{prod_car}").status_code if prod_car is not None else 0
            body = {
                "matchers": ['environment="prod"', 'alertname="headlights-left-on"'],
                "duration": "1h",
                "comment": "demo",
            }
            silence = http.post("/v1/silences", json=body).status_code
        for row, value in zip(seen, [f"{len(items):,}", ", ".join(f"{k} {v}" for k, v in envs.items()),
                                     ", ".join(f"{k} {v}" for k, v in stages.items()), str(incidents),
                                     str(car_status), str(silence)], strict=True):  # fmt: skip
            seen[row].append(value)
    table = Table("", "ops (role=ops)", "partner (environment=beta)", title="what each key sees")
    for row, (a, b) in seen.items():
        table.add_row(row, a, b)
    console.print(table)
    console.print(
        "  the partner sees only beta vehicles not at stage prod (the seed's policies; ops may do "
        "everything); a hidden vehicle answers 404, like a missing one",
        highlight=False,
    )
    events = _events(settings, base, partner, 4)
    if events:
        console.print("  GET /v1/events (server-sent events; partner key, resumed with Last-Event-ID):")
    for eid, kind, car_id in events:
        console.print(f"    id {eid}  {kind:<8} car {car_id}", highlight=False)
    console.print(
        f'  try it: curl -H "Authorization: Bearer {partner}" "{base}/v1/vehicles?environment=beta&limit=3"',
        highlight=False,
        markup=False,
        emoji=False,
    )
    return {"ops": ops, "partner": partner}
