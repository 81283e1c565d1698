"""Alert delivery against real receivers on loopback: signed webhooks with retries, Retry-After, the
dead-letter queue and replay, 410, the SSRF guard; multipart e-mail through a real SMTP server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from aiosmtpd.controller import Controller

from alerts.config import WebhookSpec
from alerts.delivery import SmtpSettings, send_email, send_webhook
from alerts.outbox import Job, Outbox, work
from alerts.signing import new_secret
from stack.procs import free_port
from tests.unit.test_alerts_core import verify

pytestmark = pytest.mark.integration
LOOPBACK = ("127.0.0.0/8",)


class Receiver:
    """An HTTP receiver that answers with a script of (status, headers) and records what it got."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = script
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, hdrs = outer.script.pop(0) if outer.script else (200, {})
                self.send_response(status)
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def outbox(any_redis_url: str) -> Iterator[Outbox]:
    """The outbox on one Redis instance, then on a Redis Cluster."""
    from tests.conftest import delete_prefix, sync_client

    client = sync_client(any_redis_url)
    prefix = f"t{uuid.uuid4().hex[:8]}:alerts:"
    yield Outbox(client, prefix)
    delete_prefix(client, prefix)


def run(outbox: Outbox, spec: WebhookSpec, now: float, allowed: tuple[str, ...] = LOOPBACK) -> list[str]:
    def send(job: Job) -> Any:
        return send_webhook(spec, job.id, orjson.dumps(job.payload), allowed=allowed)

    return work(outbox, "ops", send, max_attempts=spec.max_attempts, first_s=1.0, cap_s=60.0, now_s=now)


def job(n: int = 1) -> Job:
    return Job(
        f"msg_{uuid.uuid4().hex[:8]}", "ops", "webhook", {"status": "firing", "n": n}, incidents=["inc-1"]
    )


def test_500_then_200_is_delivered_once_signed(outbox: Outbox) -> None:
    rx = Receiver([(500, {}), (200, {})])
    secret = new_secret()
    spec = WebhookSpec(url=rx.url, secrets=[secret], max_attempts=5)
    try:
        j = job()
        assert outbox.enqueue(j, now_s=0) and not outbox.enqueue(j, now_s=0)  # idempotent
        assert run(outbox, spec, now=0) == ["retrying"]
        assert run(outbox, spec, now=0.1) == []  # backing off
        assert run(outbox, spec, now=5) == ["delivered"]
        assert run(outbox, spec, now=100) == []
        assert not outbox.enqueue(j)  # delivered: a replayed notification is not sent again
    finally:
        rx.close()
    assert len(rx.requests) == 2
    ids = {h["webhook-id"] for h, _ in rx.requests}
    assert ids == {j.id}  # the same webhook-id on the retry: receivers can dedupe
    for hdrs, body in rx.requests:
        assert verify([secret], hdrs, body)
    log = outbox.delivery_log("inc-1")["ops"]
    assert log["status"] == "delivered" and log["attempts"] == 2


def test_429_retry_after_is_honoured(outbox: Outbox) -> None:
    rx = Receiver([(429, {"Retry-After": "30"}), (200, {})])
    spec = WebhookSpec(url=rx.url, max_attempts=5)
    try:
        outbox.enqueue(job(), now_s=0)
        assert run(outbox, spec, now=0) == ["retrying"]
        assert run(outbox, spec, now=29) == []  # backoff alone would be ~1 s
        assert run(outbox, spec, now=31) == ["delivered"]
    finally:
        rx.close()


def test_receiver_down_goes_to_the_dlq_and_replay_delivers(outbox: Outbox) -> None:
    port = free_port()
    spec = WebhookSpec(url=f"http://127.0.0.1:{port}/hook", max_attempts=3, timeout="2s")
    j = job()
    outbox.enqueue(j, now_s=0)
    outcomes = [o for t in (0, 10, 100, 1000) for o in run(outbox, spec, now=t)]
    assert outcomes == ["retrying", "retrying", "dead-lettered"]
    dead = outbox.dlq()
    assert [d.id for d in dead] == [j.id] and "ConnectError" in (dead[0].last_error or "")
    rx = Receiver([])
    try:
        spec2 = spec.model_copy(update={"url": rx.url})
        assert outbox.replay(now_s=2000) == 1
        assert run(outbox, spec2, now=2000) == ["delivered"]
    finally:
        rx.close()
    assert len(rx.requests) == 1 and rx.requests[0][0]["webhook-id"] == j.id


def test_410_disables_and_ssrf_guard_refuses(outbox: Outbox) -> None:
    rx = Receiver([(410, {})])
    try:
        spec = WebhookSpec(url=rx.url)
        outbox.enqueue(job(1), now_s=0)
        outbox.enqueue(job(2), now_s=0)
        assert run(outbox, spec, now=0) == ["dead-lettered", "dead-lettered"] or outbox.disabled("ops")
        assert outbox.disabled("ops")
        assert run(outbox, spec, now=10) == []  # a disabled endpoint gets nothing more
    finally:
        rx.close()
    refused = send_webhook(WebhookSpec(url="http://127.0.0.1:9/x"), "m", b"{}", allowed=())
    assert not refused.ok and not refused.retry and "not a public address" in (refused.error or "")
    link_local = send_webhook(WebhookSpec(url="http://169.254.169.254/latest"), "m", b"{}", allowed=LOOPBACK)
    assert not link_local.ok and "not a public address" in (link_local.error or "")


def test_email_arrives_multipart_with_recipients() -> None:
    got: list[tuple[str, list[str], bytes]] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = SmtpSettings("127.0.0.1", port, "fleet-alerts@localhost")
        res = send_email(smtp, ["customer7@example.com", "ops@example.com"], "[FIRING:1] headlights-left-on",
                         "text body", "<p>html body</p>")  # fmt: skip
    finally:
        controller.stop()
    assert res.ok
    sender, rcpts, raw = got[0]
    assert sender == "fleet-alerts@localhost" and rcpts == ["customer7@example.com", "ops@example.com"]
    msg = message_from_bytes(raw)
    assert msg["Subject"] == "[FIRING:1] headlights-left-on"
    assert sorted(p.get_content_type() for p in msg.walk() if not p.is_multipart()) == [
        "text/html",
        "text/plain",
    ]
