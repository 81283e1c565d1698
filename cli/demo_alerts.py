"""The alerting part of the demo: a local mailbox (SMTP) and webhook receiver, and the alerts worker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiosmtpd.controller import Controller
from rich.console import Console
from rich.table import Table

from alerts.signing import new_secret
from enrich.settings import Settings
from stack.procs import free_port


class LocalReceivers:
    """An SMTP mailbox and a webhook endpoint on loopback, recording what they receive."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], str]] = []
        self.hooks: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Mail:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                subject = next((ln[9:] for ln in envelope.content.decode(errors="replace").splitlines()
                                if ln.startswith("Subject: ")), "")  # fmt: skip
                outer.mails.append((list(envelope.rcpt_tos), subject))
                return "250 OK"

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.hooks.append((self.headers.get("webhook-id", ""), orjson.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.smtp_port = free_port()
        self.smtp = Controller(Mail(), hostname="127.0.0.1", port=self.smtp_port)
        self.smtp.start()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.hook_url = f"http://127.0.0.1:{self.http.server_address[1]}/fleet-ops"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.smtp.stop()
        self.http.shutdown()


def start_alerts_worker(settings: Settings, rx: LocalReceivers, log_dir: Path) -> subprocess.Popen[bytes]:
    config = {
        "route": {
            "receiver": "ops-webhook", "group_by": ["alertname", "car_id"], "group_wait": "1s",
            "group_interval": "5s", "repeat_interval": "4h",
            "routes": [{"matchers": ['audience="customer"'], "receiver": "customer-email", "continue": True},
                       {"matchers": ['alertname="schema-drift"'], "receiver": "ops",
                        "group_by": ["alertname", "dataset"]},
                       {"receiver": "ops-webhook"}],
        },
        "receivers": [
            {"name": "customer-email", "email": {"to_customer": True}},
            {"name": "ops-webhook", "webhook": {"url": rx.hook_url, "secrets": [new_secret()]}},
            {"name": "ops", "email": {"to": ["fleet-ops@localhost"]},
             "webhook": {"url": rx.hook_url, "secrets": [new_secret()]}},
        ],
        "allow_private_targets": ["127.0.0.0/8"],
    }  # fmt: skip
    path = log_dir / "demo-alerts.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **settings.as_env(), "ENRICH_ALERTS_CONFIG": str(path)}
    env.update(ENRICH_SMTP_HOST="127.0.0.1", ENRICH_SMTP_PORT=str(rx.smtp_port), ENRICH_METRICS_PORT="0")
    with open(log_dir / "alerts.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "cli.main", "alerts", "run"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip


def show_deliveries(console: Console, rx: LocalReceivers) -> None:
    console.rule(f"alert e-mails ({len(rx.mails)}, local SMTP mailbox)")
    mails = Table("to", "subject")
    for to, subject in rx.mails[-12:]:
        mails.add_row(", ".join(to), subject)
    console.print(mails)
    console.rule(f"signed webhooks to ops ({len(rx.hooks)}, {rx.hook_url})")
    hooks = Table("webhook-id", "status", "alerts")
    for wid, body in rx.hooks[-12:]:
        names = ", ".join(
            f"{a['labels'].get('alertname')} car {a['labels'].get('car_id')}" for a in body["alerts"]
        )
        hooks.add_row(wid, body["status"], names)
    console.print(hooks)
