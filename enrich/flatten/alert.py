"""The schema-drift alert: one event per dataset and run on the outliers topic (schemas/outlier.v1), for the
alerts worker to route, group, dedup and deliver like any other alert (pure).

What an Alertmanager user gets: a run that finds drift *fires* an incident with its own id
(``schema-drift/<dataset>/run-<n>``) and a fingerprint fixed per dataset (labels ``alertname``, ``dataset``),
so notifications of one dataset group together. The next run of the dataset *resolves* that incident —
whether it is clean or finds new drift (then it fires its own incident as well) — so no finding stays open
forever and ``send_resolved`` receivers hear that the schema settled. The readable report is in the
``description`` annotation; the findings as JSON in ``findings``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

ALERTNAME = "schema-drift"
SEVERE = ("incompatible", "shape", "removed")


def fingerprint(dataset: str) -> str:
    return hashlib.sha256(f"alertname={ALERTNAME},dataset={dataset}".encode()).hexdigest()[:16]


def incident_id(dataset: str, run: int) -> str:
    return f"{ALERTNAME}/{dataset}/run-{run}"


def _cell(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def describe(report: dict[str, Any]) -> str:
    """The readable drift report: one line per finding."""
    lines = [
        f"Schema drift in dataset {report['dataset']} (run {report['run']}): "
        f"schema version {report['schema_version_before']} -> {report['schema_version_after']}, "
        f"{len(report['drift'])} change(s); processing continued.",
        "",
    ]
    for f in report["drift"]:
        seen = f.get("first_seen") or {}
        where = f"{seen.get('file')}:{seen.get('line')}" if seen else "-"
        lines.append(
            f"- {f['path']}: {f['change']} ({f['old_type'] or '-'} -> {f['new_type'] or '-'}), "
            f"policy {f['policy']}, example {_cell(f['example'])}, first seen {where}"
        )
    rows = ", ".join(f"{k}={v}" for k, v in sorted(report["tables"].items()))
    lines += ["", f"Rows: {rows}; quarantined: {report['quarantined']}."]
    return "\n".join(lines)


def drift_event(report: dict[str, Any], *, now_ms: int | None = None) -> dict[str, Any]:
    """The firing alert of a run with drift."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    dataset = report["dataset"]
    changes = sorted({f["change"] for f in report["drift"]})
    severity = "critical" if any(c in SEVERE for c in changes) else "warning"
    return {
        "incident_id": incident_id(dataset, report["run"]),
        "fingerprint": fingerprint(dataset),
        "rule_id": ALERTNAME,
        "status": "firing",
        "severity": severity,
        "car_id": None,
        "device_id": None,
        "labels": {"alertname": ALERTNAME, "dataset": dataset, "severity": severity},
        "annotations": {
            "summary": f"Schema drift in {dataset}: {len(report['drift'])} change(s) ({', '.join(changes)})",
            "description": describe(report),
            "findings": orjson.dumps(report["drift"]).decode(),
            "run": str(report["run"]),
        },
        "starts_at": int(report.get("started_at_ms") or now),
        "ends_at": None,
        "generated_at": now,
        "snapshot": {"car": None, "reservation": None, "signals": {}},
    }


def resolved_event(previous: dict[str, Any], *, run: int, now_ms: int | None = None) -> dict[str, Any]:
    """The resolution of a previous run's drift incident (the event it fired, as recorded)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    out = dict(previous)
    out.update(status="resolved", ends_at=max(now, int(previous["starts_at"])), generated_at=now)
    out["annotations"] = {**previous["annotations"], "resolved_by": f"run {run}"}
    return out
