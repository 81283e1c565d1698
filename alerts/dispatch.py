"""Routing, grouping, inhibition and silences in the Alertmanager model (pure: the clock is passed in).

* Routing: depth-first; a child that matches takes the alert and, unless it has ``continue``, ends the
  search among its siblings; a node none of whose children match handles the alert itself.
* Grouping: alerts of one route with the same values of its ``group_by`` labels form a group. A new group
  is notified after ``group_wait``; a changed group (new alert, or an alert resolved) at most every
  ``group_interval``; an unchanged group with firing alerts again after ``repeat_interval``.
* Inhibition: a firing source alert mutes target alerts whose ``equal`` labels have the same values.
* Silences: time-bounded matchers; a silenced alert is not notified.
* Dedup: the notification log remembers, per (group, receiver), what was last sent and when, and what the
  receiver has been told about each incident (firing, resolved), so a restart (or a replayed outlier)
  notifies nothing twice: an incident told resolved is never told again, one told firing is repeated only
  after the repeat interval.
* Incidents over before anyone heard of them (firing and resolved both arrived before the group's next
  notification, e.g. while catching up): the notification carries them as ``already_resolved`` — with
  their start and end — so a receiver is told about every incident that fired, even one with
  ``send_resolved: false`` (it never heard of it). Whether an integration takes them is its
  ``notify_when_already_resolved`` setting (default true).
* Order: ``due`` hands each notification to ``deliver`` (the worker puts its jobs in the durable outbox)
  *before* recording it in the log, so a crash in between re-sends it after the restart (the outbox dedups
  it by its deterministic id) instead of losing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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
    resolved: tuple[Alert, ...]  # told firing before, resolved now
    digest: str  # the firing incidents sent, for dedup
    already_resolved: tuple[Alert, ...] = ()  # fired and resolved before the receiver heard of them
    after: int = 0  # when the previous notification of this group went to this receiver (0: none)

    @property
    def incidents(self) -> list[str]:
        return [a.incident_id for a in (*self.firing, *self.resolved, *self.already_resolved)]


Told = Literal["firing", "resolved"]
TOLD_RETENTION_MS = 24 * 3_600_000  # resolved incidents are remembered this long (> the replay lookback)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """What the notification log keeps per (group, receiver)."""

    digest: str  # of the firing incidents last sent
    at: int  # when
    told: dict[str, tuple[Told, int]] = field(default_factory=dict)  # incident -> (last told status, when)

    def status(self, incident: str) -> Told | None:
        found = self.told.get(incident)
        return found[0] if found is not None else None


class NotificationLog(Protocol):
    def last(self, group_key: str, receiver: str) -> LogEntry | None: ...

    def record(self, group_key: str, receiver: str, entry: LogEntry) -> None: ...


class InMemoryNotificationLog:
    def __init__(self) -> None:
        self._log: dict[tuple[str, str], LogEntry] = {}

    def last(self, group_key: str, receiver: str) -> LogEntry | None:
        return self._log.get((group_key, receiver))

    def record(self, group_key: str, receiver: str, entry: LogEntry) -> None:
        self._log[(group_key, receiver)] = entry


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
            if known is not None and known.status == "resolved":
                continue  # an incident id never fires again once resolved (a stale or replayed event)
            if known is None or known.status != alert.status:
                group.alerts[alert.incident_id] = alert
                group.changed = True

    def due(self, now: int, deliver: Callable[[Notification], None] | None = None) -> list[Notification]:
        """Notifications to send at ``now``. Each is passed to ``deliver`` first, then recorded in the log."""
        out: list[Notification] = []
        for key, group in list(self.groups.items()):
            route = group.route
            if now - group.created_at < route.group_wait_ms:
                continue
            last = self.log.last(key, route.receiver)
            told = last or LogEntry("", 0)
            visible = [a for a in group.alerts.values() if not self._muted(a, now)]
            # An incident told resolved is over for this receiver, whatever a replay brings back.
            firing = [a for a in visible if a.status == "firing" and told.status(a.incident_id) != "resolved"]
            ended = [a for a in visible if a.status == "resolved"]
            resolved = [a for a in ended if told.status(a.incident_id) == "firing"]
            already = [a for a in ended if told.status(a.incident_id) is None]
            digest = _digest(firing)
            news = bool(resolved or already)
            if last is None:
                send = bool(firing or already)
            elif news or last.digest != digest:
                if now - last.at < route.group_interval_ms:
                    continue  # wait: keep the resolved alerts for the next interval
                send = bool(firing or news)
            else:
                send = bool(firing) and now - last.at >= route.repeat_interval_ms
            if send:
                n = Notification(key, route.receiver, dict(group.labels), tuple(firing), tuple(resolved),
                                 digest, tuple(already), last.at if last else 0)  # fmt: skip
                if deliver is not None:
                    deliver(n)
                out.append(n)
                self.log.record(key, route.receiver, _told_after(told, n, now))
            self._forget_resolved(group)
        return out

    def _forget_resolved(self, group: Group) -> None:
        for incident, alert in list(group.alerts.items()):
            if alert.status == "resolved":
                del group.alerts[incident]
        if not group.alerts:
            del self.groups[group.key]


def _told_after(before: LogEntry, n: Notification, now: int) -> LogEntry:
    """The log entry after sending ``n``: what the receiver knows now (old resolved entries pruned)."""
    told = {
        incident: (status, at)
        for incident, (status, at) in before.told.items()
        if status == "firing" or now - at < TOLD_RETENTION_MS
    }
    for a in n.firing:
        told[a.incident_id] = ("firing", now)
    for a in (*n.resolved, *n.already_resolved):
        told[a.incident_id] = ("resolved", now)
    return LogEntry(n.digest, now, told)
