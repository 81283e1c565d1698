"""Standard Webhooks signatures: ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``.

Secrets are ``whsec_`` + base64 of 24–64 random bytes. Several space-separated signatures allow key
rotation; a verifier accepts the message if any of them matches one of its secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from alerts.errors import AlertsError

PREFIX = "whsec_"


def new_secret(nbytes: int = 32) -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def _key(secret: str) -> bytes:
    if not secret.startswith(PREFIX):
        raise AlertsError("webhook secrets start with whsec_")
    key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    if not 24 <= len(key) <= 64:
        raise AlertsError("webhook secrets hold 24 to 64 bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<signature>`` value for one secret."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every given secret (rotation)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
    }
