"""The alerts worker end to end: simulator → flows → outliers → e-mail to the renting customer and a
signed webhook to ops; and a kill -9 in the middle of a retry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiosmtpd.controller import Controller
from confluent_kafka import Producer

from alerts.signing import new_secret
from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from stack.procs import free_port, wait_until
from tests.integration.flow_proc import flow_env
from tests.integration.pipeline import running
from tests.integration.test_alerts_delivery import Receiver
from tests.kafka_util import consume_all
from tests.unit.test_alerts_core import verify

pytestmark = pytest.mark.integration


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        outer = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                outer.messages.append((list(envelope.rcpt_tos), envelope.content))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    yield box
    box.controller.stop()


def config_file(tmp: Path, hook_url: str, secret: str) -> Path:
    cfg = {
        "route": {
            "receiver": "ops-hook", "group_by": ["alertname", "car_id"], "group_wait": "0s",
            "group_interval": "1s", "repeat_interval": "4h",
            "routes": [
                {"matchers": ['audience="customer"'], "receiver": "customer-email", "continue": True},
                {"receiver": "ops-hook"},
            ],
        },
        "receivers": [
            {"name": "customer-email", "email": {"to_customer": True}},
            {"name": "ops-hook", "webhook": {"url": hook_url, "secrets": [secret], "send_resolved": False,
                                             "backoff": "300ms", "max_attempts": 5}},
        ],
        "allow_private_targets": ["127.0.0.0/8"],
    }  # fmt: skip
    path = tmp / "alerts.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_worker(s: Settings, cfg: Path, smtp_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = flow_env(
        s, ENRICH_ALERTS_CONFIG=str(cfg), ENRICH_SMTP_PORT=str(smtp_port), ENRICH_SMTP_HOST="127.0.0.1"
    )
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cli.main", "alerts", "run"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def test_each_headlights_incident_mails_the_customer_once_and_hooks_ops_once(
    pipeline_settings: Settings, tmp_path: Path, mailbox: Mailbox
) -> None:
    s = pipeline_settings
    rx = Receiver([])
    secret = new_secret()
    worker = start_worker(s, config_file(tmp_path, rx.url, secret), mailbox.port, tmp_path / "alerts.log")
    try:
        # Everything runs live, as in production: firing outliers are notified before they resolve.
        with running(["snapshot", "enrich"], s, tmp_path):
            cfg = SimConfig(vehicles=100, rate=1000, duration=8, scenarios=["headlights-left-on"])
            cfg.incidents_per_scenario, cfg.cdc_rate, cfg.ground_truth = 2, 0, tmp_path / "truth.json"
            Simulation(cfg, s).run()
            truth = orjson.loads((tmp_path / "truth.json").read_bytes())
            incidents = {i["car_id"] for i in truth["incidents"] if i["expect_alert"]}

            def resolved_all() -> bool:
                outs = [
                    orjson.loads(m.value() or b"") for m in consume_all(s.kafka_bootstrap, [s.topic_outliers])
                ]
                done = {
                    o["car_id"]
                    for o in outs
                    if o["rule_id"] == "headlights-left-on" and o["status"] == "resolved"
                }
                return done >= incidents

            assert wait_until(resolved_all, 90, interval=1.0), (tmp_path / "enrich.log").read_text()[-3000:]
        outliers = [
            orjson.loads(m.value() or b"") for m in consume_all(s.kafka_bootstrap, [s.topic_outliers])
        ]
        firing = [o for o in outliers if o["rule_id"] == "headlights-left-on" and o["status"] == "firing"]
        assert {o["car_id"] for o in firing} == incidents
        customers = {o["snapshot"]["reservation"]["customer_email"] for o in firing}

        def arrived() -> bool:
            mails = [m for m in mailbox.messages if set(m[0]) & customers]
            return len(mails) >= len(incidents) and len(rx.requests) >= len(incidents)

        assert wait_until(arrived, 60), (tmp_path / "alerts.log").read_text()[-3000:]
        settle = threading.Event()
        settle.wait(3.0)  # a window in which duplicates would show up (3 group intervals)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        rx.close()
    customer_mails = [m for m in mailbox.messages if set(m[0]) & customers]
    assert sorted(r for m in customer_mails for r in m[0]) == sorted(customers)  # one each, to the renter
    hooks = [orjson.loads(body) for _h, body in rx.requests]
    hooked = sorted(int(a["labels"]["car_id"]) for h in hooks for a in h["alerts"]
                    if a["labels"]["alertname"] == "headlights-left-on")  # fmt: skip
    assert hooked == sorted(incidents)  # one firing webhook per incident, none for resolved
    assert all(verify([secret], h, body) for h, body in rx.requests)


def test_worker_killed_mid_retry_delivers_exactly_once_after_restart(
    pipeline_settings: Settings, tmp_path: Path, mailbox: Mailbox
) -> None:
    s = pipeline_settings
    outlier = {"incident_id": "inc-kill-1", "fingerprint": "f1", "rule_id": "tyre-pressure-low",
               "status": "firing", "severity": "warning", "car_id": 5, "device_id": "d5",
               "labels": {"alertname": "tyre-pressure-low", "car_id": "5"},
               "annotations": {"summary": "tyre"},
               "starts_at": 1, "ends_at": None, "generated_at": 1,
               "snapshot": {"car": None, "reservation": None, "signals": {}}}  # fmt: skip
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    producer.produce(s.topic_outliers, orjson.dumps(outlier), b"5")
    assert producer.flush(10) == 0
    rx = Receiver([(500, {})] * 50)  # failing until the script is changed
    cfg = config_file(tmp_path, rx.url, new_secret())
    worker = start_worker(s, cfg, mailbox.port, tmp_path / "w1.log")
    try:
        assert wait_until(lambda: len(rx.requests) >= 1, 60), (tmp_path / "w1.log").read_text()[-3000:]
        os.kill(worker.pid, signal.SIGKILL)  # in the middle of the retries
        worker.wait(timeout=30)
        rx.script.clear()  # the receiver recovers: 200 from now on
        before = len(rx.requests)
        worker = start_worker(s, cfg, mailbox.port, tmp_path / "w2.log")
        assert wait_until(lambda: len(rx.requests) > before, 60), (tmp_path / "w2.log").read_text()[-3000:]
        settle = threading.Event()
        settle.wait(3.0)  # a window for duplicates
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        rx.close()
    ids = {h["webhook-id"] for h, _b in rx.requests}
    assert len(ids) == 1  # every attempt, before and after the restart, is the same delivery
    assert len(rx.requests) == before + 1  # and it succeeded exactly once, not again after


def outlier(rule: str, car: int, incident: str, status: str = "firing") -> dict[str, Any]:
    return {"incident_id": incident, "fingerprint": f"{rule}{car}", "rule_id": rule, "status": status,
            "severity": "warning", "car_id": car, "device_id": f"d{car}",
            "labels": {"alertname": rule, "car_id": str(car)}, "annotations": {"summary": rule},
            "starts_at": 1, "ends_at": None if status == "firing" else 2, "generated_at": 1,
            "snapshot": {"car": None, "reservation": None, "signals": {}}}  # fmt: skip


def test_grouping_inhibition_and_silences_through_the_worker(
    pipeline_settings: Settings, tmp_path: Path, mailbox: Mailbox
) -> None:
    import redis

    from alerts.worker import SilenceStore

    s = pipeline_settings
    rx = Receiver([])
    cfg_path = config_file(tmp_path, rx.url, new_secret())
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["route"]["group_wait"] = "2s"
    rule = {
        "source_matchers": ['alertname="device-silent"'],
        "target_matchers": ['alertname="low-12v-battery"'],
    }
    cfg["inhibit_rules"] = [{**rule, "equal": ["car_id"]}]
    cfg_path.write_text(yaml.safe_dump(cfg))
    SilenceStore(redis.Redis.from_url(s.redis_url), s.alerts_prefix).add(
        ['car_id="2"'], 3_600_000, comment="test"
    )
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for o in (
        outlier("device-silent", 1, "ds-1"),
        outlier("low-12v-battery", 1, "lb-1"),  # inhibited by device-silent on the same car
        outlier("low-12v-battery", 2, "lb-2"),  # silenced
        outlier("tyre-pressure-low", 3, "ty-3a"),  # these two are one group: one notification
        outlier("tyre-pressure-low", 3, "ty-3b"),
    ):
        producer.produce(s.topic_outliers, orjson.dumps(o), str(o["car_id"]).encode())
    assert producer.flush(10) == 0
    worker = start_worker(s, cfg_path, mailbox.port, tmp_path / "w.log")
    try:
        assert wait_until(lambda: len(rx.requests) >= 2, 60), (tmp_path / "w.log").read_text()[-3000:]
        settle = threading.Event()
        settle.wait(3.0)  # a window in which muted alerts would have been sent
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        rx.close()
    bodies = [orjson.loads(b) for _h, b in rx.requests]
    got = sorted(tuple(sorted(a["incidentId"] for a in body["alerts"])) for body in bodies)
    assert got == [("ds-1",), ("ty-3a", "ty-3b")]


def test_a_slow_receiver_does_not_stall_the_others(
    pipeline_settings: Settings, tmp_path: Path, mailbox: Mailbox
) -> None:
    import time as _time

    s = pipeline_settings
    slow_seen: list[float] = []
    fast = Receiver([])
    gate = threading.Event()

    slow = Receiver([])
    original = slow.server.RequestHandlerClass.do_POST  # type: ignore[attr-defined]

    def slow_post(handler: Any) -> None:
        slow_seen.append(_time.monotonic())
        gate.wait(8.0)  # hold the request until the test has seen the fast receiver's deliveries
        original(handler)

    slow.server.RequestHandlerClass.do_POST = slow_post  # type: ignore[attr-defined]
    cfg = {
        "route": {"receiver": "fast", "group_by": ["alertname", "car_id"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "4h",
                  "routes": [{"receiver": "slow", "continue": True}, {"receiver": "fast"}]},
        "receivers": [{"name": "slow", "webhook": {"url": slow.url, "timeout": "20s"}},
                      {"name": "fast", "webhook": {"url": fast.url}}],
        "allow_private_targets": ["127.0.0.0/8"],
    }  # fmt: skip
    cfg_path = tmp_path / "alerts.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for car in (1, 2):
        producer.produce(s.topic_outliers, orjson.dumps(outlier("tyre-pressure-low", car, f"t-{car}")), b"k")
    assert producer.flush(10) == 0
    worker = start_worker(s, cfg_path, mailbox.port, tmp_path / "w.log")
    try:
        assert wait_until(lambda: len(fast.requests) >= 2, 60), (tmp_path / "w.log").read_text()[-3000:]
        assert slow_seen and not slow.requests  # the slow receiver is still holding its first request
        gate.set()
        assert wait_until(lambda: len(slow.requests) >= 2, 60)
    finally:
        gate.set()
        worker.terminate()
        worker.wait(timeout=30)
        slow.close()
        fast.close()


def test_an_incident_over_before_the_first_notification_reaches_ops_and_the_customer_once(
    pipeline_settings: Settings, tmp_path: Path, mailbox: Mailbox
) -> None:
    """Firing and resolved arrive together (catching up): the ops webhook (send_resolved: false) and the
    customer get it once, with start and end; a restarted worker replaying the topic sends nothing more."""
    s = pipeline_settings
    rx = Receiver([])
    cfg_path = config_file(tmp_path, rx.url, new_secret())
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["route"]["group_wait"] = "2s"
    cfg_path.write_text(yaml.safe_dump(cfg))
    snap = {"car": {"model": "Kia Ray", "plate": "12가3456"},
            "reservation": {"customer_email": "late@example.com"}, "signals": {}}  # fmt: skip
    base = {**outlier("headlights-left-on", 11, "hl-11"), "snapshot": snap, "starts_at": 1_718_000_000_000}
    base["labels"] = {**base["labels"], "audience": "customer"}
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for doc in (base, {**base, "status": "resolved", "ends_at": 1_718_000_180_000}):
        producer.produce(s.topic_outliers, orjson.dumps(doc), b"11")
    assert producer.flush(10) == 0

    def customer_mails() -> list[tuple[list[str], bytes]]:
        return [m for m in mailbox.messages if "late@example.com" in m[0]]

    worker = start_worker(s, cfg_path, mailbox.port, tmp_path / "w1.log")
    try:
        assert wait_until(lambda: len(rx.requests) >= 1 and len(customer_mails()) >= 1, 60), (
            tmp_path / "w1.log"
        ).read_text()[-3000:]
        worker.terminate()
        worker.wait(timeout=30)
        worker = start_worker(s, cfg_path, mailbox.port, tmp_path / "w2.log")  # replays the outliers
        log2 = tmp_path / "w2.log"
        assert wait_until(lambda: "alerts worker:" in log2.read_text(), 30)
        settle = threading.Event()
        settle.wait(5.0)  # group_wait + a tick or two: where a duplicate would be sent
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        rx.close()
    [(_hdrs, raw)] = rx.requests
    body = orjson.loads(raw)
    [alert] = body["alerts"]
    assert (body["status"], alert["status"], alert["incidentId"]) == ("resolved", "resolved", "hl-11")
    assert alert["startsAt"].startswith("2024-06-10T06:13:20") and alert["endsAt"].startswith(
        "2024-06-10T06:16:20"
    )
    [(_to, content)] = customer_mails()
    text = content.decode(errors="replace")
    assert "RESOLVED:1" in text and "2024-06-10T06:16:20" in text  # the e-mail states its resolved time
