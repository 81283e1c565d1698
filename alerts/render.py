"""Turning a notification into what receivers get: an Alertmanager-compatible webhook body, and e-mail."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
from typing import Any

import orjson

from alerts.dispatch import Alert, Notification


def _iso(ms: int | None) -> str:
    if ms is None:
        return "0001-01-01T00:00:00Z"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message_id(n: Notification) -> str:
    """Stable per (group, receiver, content): redeliveries and replays carry the same ``webhook-id``."""
    resolved = ",".join(sorted(a.incident_id for a in n.resolved))
    raw = f"{n.group_key}|{n.receiver}|{n.digest}|{resolved}"
    return "msg_" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def _common(alerts: list[Alert], attr: str) -> dict[str, str]:
    if not alerts:
        return {}
    first: dict[str, str] = (
        dict(alerts[0].event.get(attr) or {}) if attr == "annotations" else dict(alerts[0].labels)
    )
    for a in alerts[1:]:
        other = a.event.get(attr) or {} if attr == "annotations" else a.labels
        first = {k: v for k, v in first.items() if other.get(k) == v}
    return first


def webhook_body(n: Notification) -> bytes:
    alerts = [*n.firing, *n.resolved]
    doc: dict[str, Any] = {
        "version": "4",
        "groupKey": n.group_key,
        "status": "firing" if n.firing else "resolved",
        "receiver": n.receiver,
        "groupLabels": n.labels,
        "commonLabels": _common(alerts, "labels"),
        "commonAnnotations": _common(alerts, "annotations"),
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": a.status,
                "labels": a.labels,
                "annotations": a.event.get("annotations", {}),
                "startsAt": _iso(a.starts_at),
                "endsAt": _iso(a.ends_at),
                "fingerprint": a.fingerprint,
                "incidentId": a.incident_id,
                "snapshot": a.event.get("snapshot"),
            }
            for a in alerts
        ],
    }
    return orjson.dumps(doc)


def customer_email_of(n: Notification) -> str | None:
    for a in [*n.firing, *n.resolved]:
        res = (a.event.get("snapshot") or {}).get("reservation") or {}
        if res.get("customer_email"):
            return str(res["customer_email"])
    return None


def email_content(n: Notification) -> tuple[str, str, str]:
    """(subject, text, html) of the e-mail for a notification."""
    status = f"FIRING:{len(n.firing)}" if n.firing else f"RESOLVED:{len(n.resolved)}"
    alerts = [*n.firing, *n.resolved]
    names = sorted({a.labels.get("alertname", "alert") for a in alerts})
    cars = sorted({a.labels.get("car_id", "?") for a in alerts})
    subject = f"[{status}] {', '.join(names)} - car {', '.join(cars)}"
    datasets = sorted(
        {a.labels["dataset"] for a in alerts if "dataset" in a.labels and "car_id" not in a.labels}
    )
    if datasets and cars == ["?"]:  # fleet-level alerts (schema drift): about a dataset, not a car
        subject = f"[{status}] {', '.join(names)} - dataset {', '.join(datasets)}"
    lines, rows = [], []
    for a in alerts:
        ann = a.event.get("annotations", {})
        car = (a.event.get("snapshot") or {}).get("car") or {}
        what = ann.get("summary", a.labels.get("alertname", ""))
        detail = f"{car.get('model', '')} {car.get('plate', '')}".strip()
        about = f" (car {a.labels.get('car_id')} {detail})" if "car_id" in a.labels else ""
        lines.append(f"- [{a.status}] {what}{about} since {_iso(a.starts_at)}")
        rows.append(
            f"<tr><td>{html.escape(a.status)}</td><td>{html.escape(what)}</td>"
            f"<td>{html.escape(a.labels.get('car_id', ''))} {html.escape(detail)}</td>"
            f"<td>{_iso(a.starts_at)}</td></tr>"
        )
    details = [str(a.event["annotations"]["description"]) for a in alerts
               if (a.event.get("annotations") or {}).get("description")]  # fmt: skip
    text = f"{subject}\n\n" + "\n".join(lines) + "\n" + "".join(f"\n{d}\n" for d in details)
    body = (
        f"<html><body><h2>{html.escape(subject)}</h2><table border='1' cellpadding='4'>"
        "<tr><th>status</th><th>what</th><th>car</th><th>since</th></tr>"
        + "".join(rows)
        + "</table>"
        + "".join(f"<pre>{html.escape(d)}</pre>" for d in details)
        + "</body></html>"
    )
    return subject, text, body
