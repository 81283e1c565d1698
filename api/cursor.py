"""Opaque, bounded page cursors.

A cursor is base64url of ``kind | position | query digest`` with a keyed MAC, at most ``MAX_LEN`` characters.
The client cannot forge a position nor reuse a cursor with other filters (both answer 400); the position
is the last id a page returned (car id, or incident sort key), so pages stay stable while data changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

MAX_LEN = 200


class CursorError(ValueError):
    pass


class Cursors:
    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.secret, payload, hashlib.sha256).digest()[:12]

    @staticmethod
    def digest(query: Mapping[str, object]) -> str:
        canon = "&".join(f"{k}={query[k]}" for k in sorted(query) if query[k] is not None)
        return hashlib.blake2b(canon.encode(), digest_size=6).hexdigest()

    def encode(self, kind: str, position: str, query: Mapping[str, object]) -> str:
        payload = f"{kind}|{position}|{self.digest(query)}".encode()
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def decode(self, cursor: str, kind: str, query: Mapping[str, object]) -> str:
        if len(cursor) > MAX_LEN:
            raise CursorError("cursor too long")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError) as exc:
            raise CursorError("malformed cursor") from exc
        payload, mac = raw[:-12], raw[-12:]
        if len(raw) <= 12 or not hmac.compare_digest(mac, self._mac(payload)):
            raise CursorError("unknown cursor (from another server or tampered with)")
        try:
            got_kind, position, digest = payload.decode().split("|")
        except (UnicodeDecodeError, ValueError) as exc:
            raise CursorError("malformed cursor") from exc
        if got_kind != kind or digest != self.digest(query):
            raise CursorError("this cursor belongs to another query (filters changed)")
        return position
