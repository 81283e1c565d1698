"""Alert routing, grouping, dedup, inhibition, silences and webhook signatures (pure parts of alerts/)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from alerts.config import parse_config
from alerts.dispatch import Dispatcher, InMemoryNotificationLog, Silence, route_alert
from alerts.errors import AlertsError
from alerts.matchers import Matcher, parse_all
from alerts.signing import headers, new_secret

CONFIG: dict[str, Any] = {
    "route": {
        "receiver": "ops",
        "group_by": ["alertname", "car_id"],
        "group_wait": "10s",
        "group_interval": "1m",
        "repeat_interval": "1h",
        "routes": [
            {
                "matchers": ['audience="customer"'],
                "receiver": "customer",
                "continue": True,
                "group_wait": "0s",
            },
            {"matchers": ['severity="critical"'], "receiver": "oncall"},
            {"matchers": ['fleet=~"seoul-.*"'], "receiver": "seoul"},
        ],
    },
    "receivers": [
        {"name": "ops", "webhook": {"url": "http://127.0.0.1:9/hook"}},
        {"name": "customer", "email": {"to_customer": True}},
        {"name": "oncall", "email": {"to": ["oncall@example.com"]}},
        {"name": "seoul", "email": {"to": ["seoul@example.com"]}},
    ],
    "inhibit_rules": [
        {
            "source_matchers": ['alertname="device-silent"'],
            "target_matchers": ['alertname="low-12v-battery"'],
            "equal": ["car_id"],
        }
    ],
}


def event(rule: str, car: int, status: str = "firing", start: int = 0, **labels: str) -> dict[str, Any]:
    return {
        "incident_id": f"{rule}-{car}-{start}",
        "fingerprint": f"{rule}{car}",
        "rule_id": rule,
        "status": status,
        "labels": {"alertname": rule, "car_id": str(car), **labels},
        "starts_at": start,
        "ends_at": None if status == "firing" else start + 1,
    }


def test_matchers() -> None:
    assert Matcher.parse('fleet=~"seoul-.*"').matches({"fleet": "seoul-gangnam"})
    assert not Matcher.parse('fleet=~"seoul"').matches({"fleet": "seoul-gangnam"})  # anchored
    assert Matcher.parse("severity!=info").matches({"severity": "warning"})
    assert Matcher.parse('team!~"a|b"').matches({})
    with pytest.raises(AlertsError):
        Matcher.parse("no operator")


def test_routing_tree_with_continue() -> None:
    cfg = parse_config(CONFIG)

    def names(labels: dict[str, str]) -> list[str]:
        return [r.receiver for r in route_alert(cfg.route, labels)]

    assert names({"audience": "customer", "severity": "critical"}) == ["customer", "oncall"]  # continue
    assert names({"severity": "critical", "fleet": "seoul-x"}) == ["oncall"]  # first match wins
    assert names({"fleet": "seoul-x"}) == ["seoul"]
    assert names({"fleet": "busan"}) == ["ops"]  # nothing below matched: the root
    child = route_alert(cfg.route, {"fleet": "seoul-x"})[0]
    assert child.group_by == ("alertname", "car_id") and child.repeat_interval_ms == 3_600_000  # inherited
    with pytest.raises(AlertsError, match="unknown receiver"):
        parse_config({**CONFIG, "route": {"receiver": "nobody"}})


def test_group_wait_interval_repeat_and_resolved() -> None:
    d = Dispatcher(parse_config(CONFIG), InMemoryNotificationLog())
    d.add(event("tyre", 1), now=0)
    assert d.due(5_000) == []  # group_wait 10 s
    first = d.due(10_000)
    assert [(n.receiver, len(n.firing)) for n in first] == [("ops", 1)]
    d.add(event("tyre", 1), now=11_000)  # the same incident again (a replay): nothing new
    assert d.due(20_000) == []
    d.add(event("tyre", 1, status="resolved"), now=30_000)
    assert d.due(40_000) == []  # group_interval 1 m since the last notification
    resolved = d.due(70_000)
    assert [(len(n.firing), len(n.resolved)) for n in resolved] == [(0, 1)]
    assert d.groups == {}


def test_repeat_interval_and_dedup_survive_a_restart() -> None:
    log = InMemoryNotificationLog()
    d = Dispatcher(parse_config(CONFIG), log)
    d.add(event("tyre", 2), now=0)
    assert len(d.due(10_000)) == 1
    restarted = Dispatcher(parse_config(CONFIG), log)  # same notification log (Redis in production)
    restarted.add(event("tyre", 2), now=20_000)  # outliers replayed after the restart
    assert restarted.due(40_000) == []  # already notified: no duplicate
    assert len(restarted.due(10_000 + 3_600_000)) == 1  # but repeated after repeat_interval


def test_inhibition_and_silences() -> None:
    d = Dispatcher(parse_config(CONFIG), InMemoryNotificationLog())
    d.add(event("device-silent", 5), now=0)
    d.add(event("low-12v-battery", 5), now=0)
    d.add(event("low-12v-battery", 6), now=0)  # another car: not inhibited
    sent = d.due(10_000)
    cars = sorted((n.labels["alertname"], n.labels["car_id"]) for n in sent for _ in n.firing)
    assert cars == [("device-silent", "5"), ("low-12v-battery", "6")]
    d2 = Dispatcher(parse_config(CONFIG), InMemoryNotificationLog())
    d2.silences.append(Silence("s1", parse_all(['car_id="9"']), starts_at=0, ends_at=50_000))
    d2.add(event("tyre", 9), now=0)
    assert d2.due(10_000) == []  # silenced
    assert [len(n.firing) for n in d2.due(60_000)] == [1]  # the silence expired


def verify(secrets_: list[str], hdrs: dict[str, str], body: bytes) -> bool:
    """A verifier written from the Standard Webhooks spec, independent of alerts.signing."""
    signed = f"{hdrs['webhook-id']}.{hdrs['webhook-timestamp']}.".encode() + body
    for secret in secrets_:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for sig in hdrs["webhook-signature"].split(" "):
            version, _, value = sig.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return True
    return False


def test_webhook_signatures_verify_and_rotate() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"status":"firing"}'
    h = headers([old, new], "msg_1", 1_700_000_000, body)
    assert verify([new], h, body) and verify([old], h, body)
    assert not verify([new_secret()], h, body)
    assert not verify([new], h, body + b" ")
    with pytest.raises(AlertsError):
        headers(["not-a-secret"], "m", 1, body)
