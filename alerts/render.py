"""Turning a notification into what receivers get: an Alertmanager-compatible webhook body, and e-mail.

``selected`` picks what one integration is told: firing alerts always; alerts resolved after being told
firing only with ``send_resolved``; alerts that fired and resolved before the receiver heard of them
(``already_resolved``) with ``notify_when_already_resolved`` (default true) — those carry their start and
end (``status: resolved`` with ``startsAt`` and ``endsAt`` in the webhook, "from … to …" in the e-mail).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
from typing import Any

import orjson

from alerts.config import EmailSpec, WebhookSpec
from alerts.dispatch import Alert, Notification


def _iso(ms: int | None) -> str:
    if ms is None:
        return "0001-01-01T00:00:00Z"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message_id(n: Notification) -> str:
    """Stable per (group, receiver, content, previous notification): redeliveries and replays after a
    restart carry the same ``webhook-id``, while a repeat after ``repeat_interval`` is a new message."""
    resolved = ",".join(sorted(a.incident_id for a in (*n.resolved, *n.already_resolved)))
    raw = f"{n.group_key}|{n.receiver}|{n.digest}|{resolved}|{n.after}"
    return "msg_" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def selected(n: Notification, spec: EmailSpec | WebhookSpec) -> list[Alert]:
    """The alerts of ``n`` one integration is told about (see the module docstring); may be empty."""
    out = list(n.firing)
    if spec.send_resolved:
        out += n.resolved
    if spec.notify_when_already_resolved:
        out += n.already_resolved
    return out


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


def webhook_body(n: Notification, alerts: list[Alert] | None = None) -> bytes:
    """The Alertmanager-compatible body for ``alerts`` (default: all of ``n``'s)."""
    if alerts is None:
        alerts = [*n.firing, *n.resolved, *n.already_resolved]
    doc: dict[str, Any] = {
        "version": "4",
        "groupKey": n.group_key,
        "status": "firing" if any(a.status == "firing" for a in alerts) else "resolved",
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


def customer_email_of(n: Notification, path: str = "reservation.customer_email") -> str | None:
    """The customer's address from the alerts' snapshots: ``path`` is ``<child role>.<column>``."""
    role, column = path.split(".", 1)
    for a in [*n.firing, *n.resolved, *n.already_resolved]:
        row = (a.event.get("snapshot") or {}).get(role) or {}
        if row.get(column):
            return str(row[column])
    return None


def _when(a: Alert) -> str:
    if a.status == "resolved" and a.ends_at is not None:
        return f"from {_iso(a.starts_at)} to {_iso(a.ends_at)} (resolved)"
    return f"since {_iso(a.starts_at)}"


def email_content(n: Notification, alerts: list[Alert] | None = None) -> tuple[str, str, str]:
    """(subject, text, html) of the e-mail about ``alerts`` (default: all of ``n``'s). A resolved alert
    states when it started and when it was resolved."""
    if alerts is None:
        alerts = [*n.firing, *n.resolved, *n.already_resolved]
    firing = [a for a in alerts if a.status == "firing"]
    status = f"FIRING:{len(firing)}" if firing else f"RESOLVED:{len(alerts)}"
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
        lines.append(f"- [{a.status}] {what}{about} {_when(a)}")
        rows.append(
            f"<tr><td>{html.escape(a.status)}</td><td>{html.escape(what)}</td>"
            f"<td>{html.escape(a.labels.get('car_id', ''))} {html.escape(detail)}</td>"
            f"<td>{html.escape(_when(a))}</td></tr>"
        )
    details = [str(a.event["annotations"]["description"]) for a in alerts
               if (a.event.get("annotations") or {}).get("description")]  # fmt: skip
    text = f"{subject}\n\n" + "\n".join(lines) + "\n" + "".join(f"\n{d}\n" for d in details)
    body = (
        f"<html><body><h2>{html.escape(subject)}</h2><table border='1' cellpadding='4'>"
        "<tr><th>status</th><th>what</th><th>car</th><th>when</th></tr>"
        + "".join(rows)
        + "</table>"
        + "".join(f"<pre>{html.escape(d)}</pre>" for d in details)
        + "</body></html>"
    )
    return subject, text, body
