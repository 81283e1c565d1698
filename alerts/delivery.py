"""Sending one notification: signed webhooks (Standard Webhooks) and multipart e-mail over SMTP.

A send returns an ``Attempt``: delivered, or a failure with whether to retry and when (``Retry-After``).
Retrying, backoff and the dead-letter queue are the outbox's job (alerts/outbox.py).
"""

from __future__ import annotations

import email.utils
import ipaddress
import random
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import urlparse

import httpx

from alerts.config import EmailSpec, WebhookSpec
from alerts.errors import AlertsError
from alerts.signing import headers as signature_headers
from enrich.rules.model import parse_duration


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    status: int | None = None
    error: str | None = None
    retry: bool = True  # False: give up now (4xx other than 408/429, SSRF refusal, 410)
    retry_after_s: float | None = None
    disable: bool = False  # 410 Gone: the endpoint asked to be disabled


def check_target(url: str, allowed: tuple[str, ...]) -> None:
    """SSRF guard: refuse private, loopback, link-local, reserved and multicast targets unless allowed."""
    host = urlparse(url).hostname
    if not host:
        raise AlertsError(f"webhook url without host: {url!r}")
    nets = [ipaddress.ip_network(c, strict=False) for c in allowed]
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise AlertsError(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if any(ip in n for n in nets):
            continue
        if (
            ip.is_private
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_reserved
            or ip.is_multicast
            or ip.is_unspecified
        ):
            raise AlertsError(
                f"refusing webhook target {host} ({ip}): not a public address (allow it in config)"
            )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def send_webhook(
    spec: WebhookSpec,
    msg_id: str,
    body: bytes,
    *,
    allowed: tuple[str, ...],
    client: httpx.Client | None = None,
) -> Attempt:
    try:
        check_target(spec.url, allowed)
    except AlertsError as exc:
        return Attempt(False, error=str(exc), retry=False)
    hdrs = {"content-type": "application/json", **spec.headers}
    if spec.secrets:
        hdrs.update(signature_headers(spec.secrets, msg_id, int(time.time()), body))
    else:
        hdrs.update({"webhook-id": msg_id, "webhook-timestamp": str(int(time.time()))})
    timeout = parse_duration(spec.timeout) / 1000
    try:
        if client is None:
            with httpx.Client(timeout=timeout, follow_redirects=False) as own:
                resp = own.post(spec.url, content=body, headers=hdrs)
        else:
            resp = client.post(spec.url, content=body, headers=hdrs, timeout=timeout)
    except httpx.HTTPError as exc:
        return Attempt(False, error=f"{type(exc).__name__}: {exc}")
    code = resp.status_code
    if 200 <= code < 300:
        return Attempt(True, status=code)
    if code == 410:
        return Attempt(False, status=code, error="410 Gone: endpoint disabled", retry=False, disable=True)
    retryable = code in (408, 425, 429) or code >= 500
    return Attempt(False, status=code, error=f"HTTP {code}", retry=retryable,
                   retry_after_s=_retry_after(resp.headers.get("retry-after")))  # fmt: skip


def backoff_s(attempt: int, first_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [base/2, base], base = first * 2^(attempt-1)."""
    base = min(cap_s, first_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(base / 2, base)


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout_s: float = 15.0


def send_email(
    smtp: SmtpSettings, to: list[str], subject: str, text: str, html: str, *, message_id: str | None = None
) -> Attempt:
    """Send one multipart e-mail. ``message_id`` (e.g. from the outbox job id) makes a resend after a crash
    carry the same ``Message-ID``, so mail clients and tests can tell it is the same message."""
    if not to:
        return Attempt(False, error="no recipients", retry=False)
    msg = EmailMessage()
    msg["From"] = smtp.sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="fleet-enrich")
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s) as client:
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                client.login(smtp.username, smtp.password or "")
            refused = client.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        permanent = isinstance(exc, smtplib.SMTPRecipientsRefused)
        return Attempt(False, error=f"{type(exc).__name__}: {exc}", retry=not permanent)
    if refused:
        return Attempt(False, error=f"refused: {sorted(refused)}", retry=False)
    return Attempt(True)


def email_recipients(spec: EmailSpec, customer_email: str | None) -> list[str]:
    out = list(spec.to)
    if spec.to_customer and customer_email:
        out.append(customer_email)
    return out
