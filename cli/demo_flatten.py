"""The batch part of the demo: export the demo fleet's trip reports, flatten them, plant drift, see the alert.

Batch 1 (gzip JSON Lines) is flattened into relational Parquet tables and registered as schema version 1;
batch 2 carries three schema changes (a field added at level 4, a level-3 number sent as a string, a level-5
field gone). Its run completes, reports the drift, and sends one schema-drift alert through the alerts
worker, which e-mails ops and calls the ops webhook (the demo's local mailbox and receiver).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from cli.demo_alerts import LocalReceivers
from enrich.settings import Settings
from simulator.trips import Car, trip_reports

REPORTS = 3000


def _flatten(settings: Settings, src: Path, out: Path, report: Path, log: Path) -> tuple[int, dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "flatten",
        str(src),
        "--dataset",
        "trips",
        "--out",
        str(out),
        "--report",
        str(report),
        "--partition-by",
        "trip.started_at:date",
    ]
    with open(log, "ab") as f:
        code = subprocess.run(
            cmd, env={**os.environ, **settings.as_env()}, stdout=f, stderr=subprocess.STDOUT, check=False
        ).returncode
    return code, json.loads(report.read_text()) if report.exists() else {}


def run_flatten_demo(
    settings: Settings, console: Console, rx: LocalReceivers, cars: list[Car], work: Path
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    out = work / "tables"
    start_ms = int(time.time() * 1000) - 2 * 86_400_000
    batch1, batch2 = work / "trips-batch-1.jsonl.gz", work / "trips-batch-2.jsonl"
    first = trip_reports(REPORTS, seed=1, start_ms=start_ms, cars=cars)
    later = trip_reports(
        REPORTS // 3, seed=2, drift=True, first=REPORTS, start_ms=start_ms + 86_400_000, cars=cars
    )
    batch1.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in first)))
    batch2.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in later))
    console.rule("batch flattening (enrich flatten)")
    console.print(
        f"exported {REPORTS:,} trip reports of the demo fleet ({batch1.name}, 5 levels deep) and "
        f"{REPORTS // 3:,} more with planted drift ({batch2.name})",
        highlight=False,
    )
    sample = orjson.loads(gzip.decompress(batch1.read_bytes()).split(b"\n", 1)[0])
    sample["trip"]["route"]["segments"] = sample["trip"]["route"]["segments"][:1]  # shortened for the screen
    for seg in sample["trip"]["route"]["segments"]:
        seg["samples"] = seg["samples"][:1]
    console.print_json(orjson.dumps(sample).decode())
    mails_before, hooks_before = len(rx.mails), len(rx.hooks)
    log = work / "flatten.log"
    code1, r1 = _flatten(settings, batch1, out, work / "report-1.json", log)
    code2, r2 = _flatten(settings, batch2, out, work / "report-2.json", log)
    if not r1 or not r2:
        console.print(f"[red]flatten failed (exit {code1}, {code2}); see {log}[/red]")
        return
    tables = Table("table", "rows: batch 1", "+ batch 2", title=f"Parquet tables under {out}")
    for name in sorted(set(r1["tables"]) | set(r2["tables"])):
        a, b = r1["tables"].get(name, 0), r2["tables"].get(name, 0)
        tables.add_row(name, f"{a:,}", f"{a + b:,}")
    console.print(tables)
    console.print(
        f"batch 1: exit {code1}, schema v{r1['schema_version_after']}; "
        f"batch 2: exit {code2} (3 = completed with drift), "
        f"schema v{r2['schema_version_before']} -> v{r2['schema_version_after']}"
    )
    drift = Table("path", "change", "type", "example", "policy", "first seen", title="drift in batch 2")
    for f in r2["drift"]:
        seen = f["first_seen"] or {}
        where = f"{Path(seen['file']).name}:{seen['line']}" if seen else "-"
        types = f"{f['old_type'] or '-'} -> {f['new_type'] or '-'}"
        drift.add_row(f["path"], f["change"], types, json.dumps(f["example"]), f["policy"], where)
    console.print(drift)
    console.print(
        f"  query them: duckdb -c \"select count(*) from read_parquet('{out}/trips/**/*.parquet', "
        'hive_partitioning=true)"',
        highlight=False,
        markup=False,
    )
    deadline = time.monotonic() + 30

    def drift_hook(body: dict[str, Any]) -> bool:
        return any(a["labels"].get("alertname") == "schema-drift" for a in body["alerts"])

    mails: list[tuple[list[str], str]] = []
    hooks: list[tuple[str, dict[str, Any]]] = []
    while time.monotonic() < deadline and not (mails and hooks):
        time.sleep(0.5)
        mails = [(to, s) for to, s in rx.mails[mails_before:] if "schema-drift" in s]
        hooks = [(w, b) for w, b in rx.hooks[hooks_before:] if drift_hook(b)]
    deliveries = Table("channel", "to", "what", title="the schema-drift alert (one per dataset and run)")
    for to, subject in mails:
        deliveries.add_row("e-mail", ", ".join(to), subject)
    for wid, body in hooks:
        a = body["alerts"][0]
        deliveries.add_row(
            "webhook (signed)", rx.hook_url, f"{wid}: {a['status']} {a['annotations']['summary']}"
        )
    console.print(deliveries)
    if not mails or not hooks:
        console.print("[yellow]the drift alert did not arrive in time; see the alerts log[/yellow]")
