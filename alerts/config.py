"""Alerts configuration in the Alertmanager model (YAML): routing tree, receivers, inhibition.

    route:
      receiver: ops-webhook
      group_by: [alertname, car_id]
      group_wait: 5s
      group_interval: 1m
      repeat_interval: 4h
      routes:
        - matchers: ['audience="customer"']
          receiver: customer-email
          continue: true
    receivers:
      - name: customer-email
        email: {to_customer: true, notify_when_already_resolved: true}   # the default
      - name: ops-webhook
        webhook: {url: "https://ops.example.com/hooks/fleet", secrets: [whsec_...]}
    inhibit_rules:
      - source_matchers: ['alertname="device-silent"']
        target_matchers: ['alertname="low-12v-battery"']
        equal: [car_id]
    allow_private_targets: []   # CIDRs webhooks may reach despite the SSRF guard (tests: 127.0.0.0/8)

Children inherit ``receiver``, ``group_by`` and the intervals of their parent unless they set them.

An incident that fired always reaches every receiver of its route: when it was already resolved before the
receiver's first notification about it, the notification carries it with its start and end even where
``send_resolved`` is false (that receiver never heard of it); ``notify_when_already_resolved: false`` opts
an integration out (e.g. customers who need not hear about a problem that is over).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alerts.errors import AlertsError
from alerts.matchers import Matcher, parse_all
from enrich.rules.model import parse_duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


ALREADY_RESOLVED_HELP = (
    "Also tell about an incident that fired and was already resolved before this receiver heard of it "
    "(both arrived before the group's first notification, e.g. while catching up); the message gives its "
    "start and end. Independent of send_resolved, which is about incidents the receiver was told firing."
)


class EmailSpec(_Strict):
    to: list[str] = Field(default_factory=list, description="Fixed recipients")
    to_customer: bool = Field(False, description="Also the renting customer's address from the outlier")
    customer_email: str = Field(
        "reservation.customer_email",
        pattern=r"^[a-z][a-z0-9_]*\.[^.\s]+$",
        description="Where the customer's address is in the outlier's snapshot: <child role>.<column> of "
        "the join model (ENRICH_TABLES_FILE)",
    )
    send_resolved: bool = False
    notify_when_already_resolved: bool = Field(True, description=ALREADY_RESOLVED_HELP)


class WebhookSpec(_Strict):
    url: str
    secrets: list[str] = Field(default_factory=list, description="whsec_ secrets (several: key rotation)")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: str = "15s"
    max_attempts: int = Field(8, ge=1)
    backoff: str = Field("1s", description="First retry delay; doubles per attempt, with jitter")
    max_backoff: str = "5m"
    send_resolved: bool = True
    notify_when_already_resolved: bool = Field(True, description=ALREADY_RESOLVED_HELP)


class ReceiverSpec(_Strict):
    name: str
    email: EmailSpec | None = None
    webhook: WebhookSpec | None = None


class RouteSpec(_Strict):
    receiver: str | None = None
    matchers: list[str] = Field(default_factory=list)
    group_by: list[str] | None = None
    group_wait: str | None = None
    group_interval: str | None = None
    repeat_interval: str | None = None
    continue_: bool = Field(False, alias="continue")
    routes: list[RouteSpec] = Field(default_factory=list)


class InhibitSpec(_Strict):
    source_matchers: list[str]
    target_matchers: list[str]
    equal: list[str] = Field(default_factory=list)


class ConfigSpec(_Strict):
    route: RouteSpec
    receivers: list[ReceiverSpec]
    inhibit_rules: list[InhibitSpec] = Field(default_factory=list)
    allow_private_targets: list[str] = Field(default_factory=list)

    @field_validator("receivers")
    @classmethod
    def _unique(cls, value: list[ReceiverSpec]) -> list[ReceiverSpec]:
        names = [r.name for r in value]
        if len(set(names)) != len(names):
            raise ValueError("receiver names must be unique")
        return value


@dataclass(frozen=True, slots=True)
class Route:
    """A node of the routing tree, with inherited settings resolved."""

    id: str
    receiver: str
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...]
    group_wait_ms: int
    group_interval_ms: int
    repeat_interval_ms: int
    continue_: bool
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True, slots=True)
class InhibitRule:
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    route: Route
    receivers: dict[str, ReceiverSpec]
    inhibit_rules: tuple[InhibitRule, ...] = ()
    allow_private_targets: tuple[str, ...] = field(default_factory=tuple)


def _build(spec: RouteSpec, parent: Route | None, path: str) -> Route:
    def pick(own: str | None, inherited: int, default: str) -> int:
        return parse_duration(own) if own is not None else (inherited if parent else parse_duration(default))

    receiver = spec.receiver or (parent.receiver if parent else None)
    if receiver is None:
        raise AlertsError("the root route needs a receiver")
    node = Route(
        id=path,
        receiver=receiver,
        matchers=parse_all(spec.matchers),
        group_by=tuple(spec.group_by) if spec.group_by is not None else (parent.group_by if parent else ()),
        group_wait_ms=pick(spec.group_wait, parent.group_wait_ms if parent else 0, "30s"),
        group_interval_ms=pick(spec.group_interval, parent.group_interval_ms if parent else 0, "5m"),
        repeat_interval_ms=pick(spec.repeat_interval, parent.repeat_interval_ms if parent else 0, "4h"),
        continue_=spec.continue_,
    )
    children = tuple(_build(child, node, f"{path}.{i}") for i, child in enumerate(spec.routes))
    return dataclasses.replace(node, routes=children)


def parse_config(doc: Any) -> AlertsConfig:
    try:
        spec = ConfigSpec.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise AlertsError(f"{where}: {err['msg']}") from exc
    receivers = {r.name: r for r in spec.receivers}
    route = _build(spec.route, None, "root")

    def check(node: Route) -> None:
        if node.receiver not in receivers:
            raise AlertsError(f"route {node.id}: unknown receiver {node.receiver!r}")
        for child in node.routes:
            check(child)

    check(route)
    inhibit = tuple(
        InhibitRule(parse_all(r.source_matchers), parse_all(r.target_matchers), tuple(r.equal))
        for r in spec.inhibit_rules
    )
    return AlertsConfig(route, receivers, inhibit, tuple(spec.allow_private_targets))


def load_config(path: Path) -> AlertsConfig:
    return parse_config(yaml.safe_load(path.read_text()))
