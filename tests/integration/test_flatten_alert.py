"""The schema-drift alert end to end: `enrich flatten` on two batches → one alert event on the outliers
topic → the real alerts worker → one e-mail to a real SMTP server (aiosmtpd) and one signed webhook to a
receiver on loopback; the next clean run resolves the incident."""

from __future__ import annotations

import email
import subprocess
import sys
import threading
from email.message import Message
from pathlib import Path

import orjson
import pytest
import yaml

from alerts.signing import new_secret
from enrich.settings import Settings
from simulator.trips import trip_reports
from stack.procs import wait_until
from tests.integration.flow_proc import flow_env
from tests.integration.test_alerts_delivery import Receiver
from tests.integration.test_alerts_worker import Mailbox, start_worker
from tests.kafka_util import consume_all
from tests.unit.test_alerts_core import verify

pytestmark = pytest.mark.integration


def _config(tmp: Path, hook_url: str, secret: str) -> Path:
    cfg = {
        "route": {
            "receiver": "ops", "group_by": ["alertname", "car_id"], "group_wait": "0s",
            "group_interval": "1s", "repeat_interval": "4h",
            "routes": [{"matchers": ['alertname="schema-drift"'], "receiver": "ops",
                        "group_by": ["alertname", "dataset"]}],
        },
        "receivers": [{"name": "ops", "email": {"to": ["fleet-ops@localhost"]},
                       "webhook": {"url": hook_url, "secrets": [secret]}}],
        "allow_private_targets": ["127.0.0.0/8"],
    }  # fmt: skip
    path = tmp / "alerts.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _flatten(s: Settings, src: Path, out: Path) -> int:
    cmd = [sys.executable, "-m", "cli.main", "flatten", str(src), "--dataset", "trips", "--out", str(out)]
    return subprocess.run(cmd, check=False, env=flow_env(s), capture_output=True, timeout=120).returncode


def _text(raw: bytes) -> str:
    msg: Message = email.message_from_bytes(raw)
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def test_drift_sends_one_alert_by_mail_and_signed_webhook_and_the_next_clean_run_resolves_it(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    s = pipeline_settings
    b1, b2 = tmp_path / "batch-1.jsonl", tmp_path / "batch-2.jsonl"
    b1.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in trip_reports(200)))
    b2.write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in trip_reports(100, seed=2, drift=True, first=200))
    )
    box, rx, secret = Mailbox(), Receiver([]), new_secret()
    worker = start_worker(s, _config(tmp_path, rx.url, secret), box.port, tmp_path / "alerts.log")
    try:
        out = tmp_path / "out"
        assert _flatten(s, b1, out) == 0  # first run: version 1, no drift, no alert
        assert _flatten(s, b2, out) == 3  # drift: completed, exit code 3
        events = [orjson.loads(m.value() or b"") for m in consume_all(s.kafka_bootstrap, [s.topic_outliers])]
        assert [(e["rule_id"], e["status"], e["labels"]["dataset"]) for e in events] == [
            ("schema-drift", "firing", "trips")
        ]
        log = tmp_path / "alerts.log"
        assert wait_until(lambda: bool(box.messages and rx.requests), 60), log.read_text()[-3000:]
        threading.Event().wait(3.0)  # a window in which duplicates would show up (3 group intervals)
        assert len(box.messages) == 1 and len(rx.requests) == 1
        rcpt, raw = box.messages[0]
        assert rcpt == ["fleet-ops@localhost"]
        text = _text(raw)
        assert "[FIRING:1] schema-drift - dataset trips" in text
        for line in ("trip.route.distance_km: incompatible (double -> string)",
                     "trip.route.segments[].surface: added (- -> string)",
                     "trip.route.segments[].road.lanes: removed (int64 -> -)"):  # fmt: skip
            assert line in text
        assert f"first seen {b2}:1" in text
        headers, body = rx.requests[0]
        assert verify([secret], headers, body)
        hook = orjson.loads(body)
        (alert,) = hook["alerts"]
        assert alert["status"] == "firing" and alert["incidentId"] == "schema-drift/trips/run-2"
        assert alert["labels"] == {"alertname": "schema-drift", "dataset": "trips", "severity": "critical"}
        findings = orjson.loads(alert["annotations"]["findings"])
        assert {(f["path"], f["change"]) for f in findings} == {
            ("trip.route.distance_km", "incompatible"),
            ("trip.route.segments[].surface", "added"),
            ("trip.route.segments[].road.lanes", "removed"),
        }

        assert _flatten(s, b2, out) == 0  # the same shape again: clean, and it resolves the incident
        assert wait_until(lambda: len(rx.requests) >= 2, 60), log.read_text()[-3000:]
        resolved = orjson.loads(rx.requests[1][1])
        assert resolved["status"] == "resolved"
        assert resolved["alerts"][0]["incidentId"] == "schema-drift/trips/run-2"
        assert len(box.messages) == 1  # e-mail is for firing alerts (send_resolved: false)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        rx.close()
        box.controller.stop()
