"""Routing, grouping, inhibition and silences in the Alertmanager model (pure: the clock is passed in).

* Routing: depth-first; a child that matches takes the alert and, unless it has ``continue``, ends the
  search among its siblings; a node none of whose children match handles the alert itself.
* Grouping: alerts of one route with the same values of its ``group_by`` labels form a group. A new group
  is notified after ``group_wait``; a changed group (new alert, or an alert resolved) at most every
  ``group_interval``; an unchanged group with firing alerts again after ``repeat_interval``.
* Inhibition: a firing source alert mutes target alerts whose ``equal`` labels have the same values.
* Silences: time-bounded matchers; a silenced alert is not notified.
* Dedup: the notification log remembers, per (group, receiver), what was last sent and when, so a restart
  (or a replayed outlier) does not notify again inside the repeat interval.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from alerts.config import AlertsConfig, Route
from alerts.matchers import Matcher, match_all


def route_alert(route: Route, labels: Mapping[str, str]) -> list[Route]:
    """The routes (leaf-most matching nodes) that handle an alert with ``labels``."""
    out: list[Route] = []
    for child in route.routes:
        if match_all(child.matchers, labels):
            out.extend(route_alert(child, labels))
            if not child.continue_:
                break
    return out or [route]


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: int
    ends_at: int
    created_by: str = ""
    comment: str = ""

    def active(self, now: int) -> bool:
        return self.starts_at <= now < self.ends_at

    def mutes(self, labels: Mapping[str, str], now: int) -> bool:
        return self.active(now) and match_all(self.matchers, labels)


@dataclass(slots=True)
class Alert:
    """The latest outlier event of one incident."""

    fingerprint: str
    incident_id: str
    labels: dict[str, str]
    status: str  # firing | resolved
    starts_at: int
    ends_at: int | None
    event: dict[str, Any]


@dataclass(slots=True)
class Group:
    key: str
    route: Route
    labels: dict[str, str]
    alerts: dict[str, Alert] = field(default_factory=dict)  # incident id -> alert
    created_at: int = 0
    changed: bool = True


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to send: a group's alerts for one receiver."""

    group_key: str
    receiver: str
    labels: dict[str, str]
    firing: tuple[Alert, ...]
    resolved: tuple[Alert, ...]
    digest: str  # the firing incidents sent, for dedup


class NotificationLog(Protocol):
    def last(self, group_key: str, receiver: str) -> tuple[str, int] | None: ...

    def record(self, group_key: str, receiver: str, digest: str, at: int) -> None: ...


class InMemoryNotificationLog:
    def __init__(self) -> None:
        self._log: dict[tuple[str, str], tuple[str, int]] = {}

    def last(self, group_key: str, receiver: str) -> tuple[str, int] | None:
        return self._log.get((group_key, receiver))

    def record(self, group_key: str, receiver: str, digest: str, at: int) -> None:
        self._log[(group_key, receiver)] = (digest, at)


def _digest(firing: list[Alert]) -> str:
    """What a receiver knows after a notification: the set of firing incidents."""
    return hashlib.sha256("|".join(sorted(a.incident_id for a in firing)).encode()).hexdigest()[:16]


class Dispatcher:
    def __init__(self, config: AlertsConfig, log: NotificationLog) -> None:
        self.config = config
        self.log = log
        self.groups: dict[str, Group] = {}
        self.silences: list[Silence] = []

    def _muted(self, alert: Alert, now: int) -> bool:
        return any(s.mutes(alert.labels, now) for s in self.silences) or self._inhibited(alert)

    def _inhibited(self, alert: Alert) -> bool:
        for rule in self.config.inhibit_rules:
            if not match_all(rule.target, alert.labels):
                continue
            for group in self.groups.values():
                for src in group.alerts.values():
                    if src is alert or src.status != "firing" or not match_all(rule.source, src.labels):
                        continue
                    if all(src.labels.get(k) == alert.labels.get(k) for k in rule.equal):
                        return True
        return False

    def add(self, event: dict[str, Any], now: int) -> None:
        """Take one outlier event (schemas/outlier.v1)."""
        labels = {str(k): str(v) for k, v in event["labels"].items()}
        alert = Alert(event["fingerprint"], event["incident_id"], labels, event["status"], event["starts_at"],
                      event.get("ends_at"), event)  # fmt: skip
        for route in route_alert(self.config.route, labels):
            group_labels = {k: labels.get(k, "") for k in route.group_by}
            key = f"{route.id}|{route.receiver}|" + ",".join(
                f"{k}={v}" for k, v in sorted(group_labels.items())
            )
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = Group(key, route, group_labels, created_at=now)
            known = group.alerts.get(alert.incident_id)
            if known is None or known.status != alert.status:
                group.alerts[alert.incident_id] = alert
                group.changed = True

    def due(self, now: int) -> list[Notification]:
        """Notifications to send at ``now`` (each is recorded in the notification log when taken)."""
        out: list[Notification] = []
        for key, group in list(self.groups.items()):
            route = group.route
            if now - group.created_at < route.group_wait_ms:
                continue
            visible = [a for a in group.alerts.values() if not self._muted(a, now)]
            firing = [a for a in visible if a.status == "firing"]
            resolved = [a for a in visible if a.status == "resolved"]
            digest = _digest(firing)
            last = self.log.last(key, route.receiver)
            if last is None:
                send = bool(firing or resolved)
            else:
                last_digest, last_at = last
                if resolved or last_digest != digest:
                    send = now - last_at >= route.group_interval_ms
                    if not send:
                        continue  # wait: keep the resolved alerts for the next interval
                else:
                    send = bool(firing) and now - last_at >= route.repeat_interval_ms
            if send:
                out.append(
                    Notification(
                        key, route.receiver, dict(group.labels), tuple(firing), tuple(resolved), digest
                    )
                )
                self.log.record(key, route.receiver, digest, now)
            self._forget_resolved(group)
        return out

    def _forget_resolved(self, group: Group) -> None:
        for incident, alert in list(group.alerts.items()):
            if alert.status == "resolved":
                del group.alerts[incident]
        if not group.alerts:
            del self.groups[group.key]
