"""An incident that fired always reaches its receivers, even when it was over before the first notification;
and nothing is told twice, also after a restart that replays the outliers (pure: dispatcher + rendering)."""

from __future__ import annotations

from typing import Any

import orjson

from alerts.config import parse_config
from alerts.dispatch import Dispatcher, InMemoryNotificationLog, Notification
from alerts.render import message_id
from alerts.worker import jobs_for

HOUR = 3_600_000


def config(*, customer_already: bool = True) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "ops", "group_by": ["alertname", "car_id"], "group_wait": "5s",
            "group_interval": "1m", "repeat_interval": "4h",
            "routes": [{"matchers": ['audience="customer"'], "receiver": "customer", "continue": True},
                       {"receiver": "ops"}],
        },
        "receivers": [
            {"name": "ops", "webhook": {"url": "https://ops.example.com/hook", "send_resolved": False}},
            {"name": "customer", "email": {"to_customer": True,
                                           "notify_when_already_resolved": customer_already}},
        ],
    }  # fmt: skip


def outlier(
    status: str, *, incident: str = "inc-1", car: int = 7, start: int = 1_000, end: int = 181_000
) -> dict[str, Any]:
    return {
        "incident_id": incident, "fingerprint": f"hl{car}", "rule_id": "headlights-left-on", "status": status,
        "labels": {"alertname": "headlights-left-on", "car_id": str(car), "audience": "customer"},
        "annotations": {"summary": "Headlights on while the engine is off"},
        "starts_at": start, "ends_at": None if status == "firing" else end,
        "snapshot": {"car": {"model": "Kia Ray", "plate": "12가3456"},
                     "reservation": {"customer_email": "mira@example.com"}},
    }  # fmt: skip


def jobs(d: Dispatcher, now: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(receiver, kind, payload) of every job the notifications due at ``now`` make."""
    out = []
    for n in d.due(now):
        spec = d.config.receivers[n.receiver]
        out += [(j.receiver, j.kind, j.payload) for j in jobs_for(n, spec)]
    return sorted(out, key=lambda j: (j[0], j[1]))


def test_firing_and_resolved_before_the_first_notification_reach_every_receiver() -> None:
    d = Dispatcher(parse_config(config()), InMemoryNotificationLog())
    d.add(outlier("firing"), now=0)
    d.add(outlier("resolved"), now=1_000)  # both within group_wait (catching up on a backlog)
    sent = jobs(d, 5_000)
    assert [(r, k) for r, k, _ in sent] == [("customer", "email"), ("ops", "webhook")]
    mail = sent[0][2]
    assert mail["to"] == ["mira@example.com"]
    assert mail["subject"].startswith("[RESOLVED:1] headlights-left-on - car 7")
    assert "resolved" in mail["text"] and "to 1970-01-01T00:03:01" in mail["text"]  # its resolved time
    body = orjson.loads(sent[1][2]["body"])  # to ops, although send_resolved is false: it never heard of it
    assert body["status"] == "resolved"
    [alert] = body["alerts"]
    assert alert["status"] == "resolved" and alert["incidentId"] == "inc-1"
    assert alert["startsAt"].startswith("1970-01-01T00:00:01") and alert["endsAt"].startswith(
        "1970-01-01T00:03:01"
    )
    assert jobs(d, 5_000 + HOUR) == []  # told once, never again


def test_a_customer_receiver_can_opt_out_of_incidents_already_over() -> None:
    d = Dispatcher(parse_config(config(customer_already=False)), InMemoryNotificationLog())
    d.add(outlier("firing"), now=0)
    d.add(outlier("resolved"), now=1_000)
    assert [(r, k) for r, k, _ in jobs(d, 5_000)] == [("ops", "webhook")]


def test_send_resolved_false_still_means_no_resolved_message_for_incidents_told_firing() -> None:
    d = Dispatcher(parse_config(config()), InMemoryNotificationLog())
    d.add(outlier("firing"), now=0)
    first = jobs(d, 5_000)
    assert [(r, k) for r, k, _ in first] == [("customer", "email"), ("ops", "webhook")]
    assert orjson.loads(first[1][2]["body"])["status"] == "firing"
    d.add(outlier("resolved"), now=30_000)
    assert jobs(d, 5_000 + 60_000) == []  # neither receiver sends resolved for an incident it was told


def test_a_replay_after_a_restart_tells_nothing_twice() -> None:
    log = InMemoryNotificationLog()
    live = Dispatcher(parse_config(config()), log)
    # incident 1 told firing then done; incident 2 over before anyone heard of it; incident 3 still firing
    live.add(outlier("firing", incident="i1"), now=0)
    assert len(jobs(live, 5_000)) == 2
    live.add(outlier("resolved", incident="i1"), now=10_000)
    live.add(outlier("firing", incident="i2", start=200_000), now=70_000)
    live.add(outlier("resolved", incident="i2", start=200_000, end=300_000), now=70_500)
    assert {r for r, _k, _p in jobs(live, 70_000)} == {"customer", "ops"}  # i2 as already resolved
    live.add(outlier("firing", incident="i3", start=400_000), now=140_000)  # a new group: waits group_wait
    assert len(jobs(live, 145_000)) == 2
    # restart: a new dispatcher re-reads every outlier of the lookback, fed in batches as the consumer does
    replay = Dispatcher(parse_config(config()), log)
    i2 = {"incident": "i2", "start": 200_000}
    events = [outlier("firing", incident="i1"), outlier("resolved", incident="i1"),
              outlier("firing", **i2), outlier("resolved", **i2),  # type: ignore[arg-type]
              outlier("firing", incident="i3", start=400_000)]  # fmt: skip
    now = 150_000
    for i, event in enumerate(events):
        replay.add(event, now=now + i)
        assert jobs(replay, now + 10_000 + i) == []  # mid-replay too: i1/i2 half-replayed are not news
    assert jobs(replay, now + HOUR) == []
    assert len(jobs(replay, 145_000 + 4 * HOUR)) == 2  # i3 is repeated after repeat_interval, as configured


def test_message_ids_are_stable_for_a_replay_and_new_for_a_repeat() -> None:
    log = InMemoryNotificationLog()
    d = Dispatcher(parse_config(config()), log)
    d.add(outlier("firing"), now=0)
    [first_ops] = [n for n in d.due(5_000) if n.receiver == "ops"]
    again = Notification(first_ops.group_key, "ops", first_ops.labels, first_ops.firing, (), first_ops.digest)
    assert message_id(again) == message_id(first_ops)  # recomputed after a crash: the outbox dedups it
    [repeat] = [n for n in d.due(5_000 + 4 * HOUR) if n.receiver == "ops"]
    assert message_id(repeat) != message_id(first_ops)  # a repeat is a new message, not swallowed


def test_a_notification_is_delivered_before_it_is_recorded() -> None:
    log = InMemoryNotificationLog()
    d = Dispatcher(parse_config(config()), log)
    d.add(outlier("firing"), now=0)
    seen: list[bool] = []

    def deliver(n: Notification) -> None:
        seen.append(log.last(n.group_key, n.receiver) is None)  # not yet recorded when handed over

    assert len(d.due(5_000, deliver)) == 2
    assert seen == [True, True]
