"""API keys: created once (the secret is shown once and never stored), kept hashed, revocable, optionally
expiring. Each key carries tags (``environment=beta``, ``fleet=seoul``…): the principal's attributes in the
API's access policies.

A key reads ``fe_<id>_<secret>``: ``id`` (12 hex digits) finds the record in one lookup, ``secret`` (32
random bytes, base64url) is checked against the stored SHA-256 of the whole key in constant time. A fast
hash is right here: the secret has 256 bits of entropy, so there is nothing to brute-force.

Layout (prefix ``api:``): ``api:key:<id>`` hash (name, tags JSON, sha256, created_at, expires_at,
revoked_at; times in epoch ms, empty when unset) and ``api:keys`` set of ids (for listing).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis

from stores.redis_client import one_slot

KEY_RE = re.compile(r"^fe_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MAX_KEY_LEN = 64


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    tags: dict[str, str]
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None
    sha256: str = field(default="", repr=False)

    def valid(self, now_ms: int) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now_ms < self.expires_at)

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "tags": self.tags,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    kid = secrets.token_hex(6)
    return kid, f"fe_{kid}_{secrets.token_urlsafe(32)}"


def key_id_of(token: str) -> str | None:
    """The id part of a well-formed key, else None (nothing else is looked up)."""
    if len(token) > MAX_KEY_LEN:
        return None
    m = KEY_RE.match(token)
    return m.group(1) if m else None


class ApiKeyStore(Protocol):
    async def create(
        self, name: str, tags: Mapping[str, str], expires_at: int | None = None
    ) -> tuple[ApiKey, str]: ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def list(self) -> list[ApiKey]: ...

    async def revoke(self, key_id: str) -> bool: ...


async def authenticate(store: ApiKeyStore, token: str, now_ms: int | None = None) -> ApiKey | None:
    """The valid key a bearer token names, or None (malformed, unknown, wrong secret, revoked, expired)."""
    kid = key_id_of(token)
    if kid is None:
        return None
    key = await store.get(kid)
    if key is None or not hmac.compare_digest(key.sha256, _digest(token)):
        return None
    return key if key.valid(int(time.time() * 1000) if now_ms is None else now_ms) else None


def _now() -> int:
    return int(time.time() * 1000)


class RedisApiKeyStore:
    """On a Redis Cluster every key carries the hash tag ``{api}`` (``one_slot``): a key's hash and the
    ``keys`` set are written in one MULTI, which must touch one slot."""

    def __init__(self, client: aioredis.Redis, prefix: str = "api:") -> None:
        self.client = client
        self.prefix = one_slot(prefix, client, "api")

    def _key(self, kid: str) -> str:
        return f"{self.prefix}key:{kid}"

    async def create(
        self, name: str, tags: Mapping[str, str], expires_at: int | None = None
    ) -> tuple[ApiKey, str]:
        kid, token = new_token()
        key = ApiKey(kid, name, dict(tags), _now(), expires_at, None, _digest(token))
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            self._key(kid),
            mapping={
                "name": name,
                "tags": orjson.dumps(key.tags),
                "sha256": key.sha256,
                "created_at": key.created_at,
                "expires_at": "" if expires_at is None else expires_at,
                "revoked_at": "",
            },
        )
        pipe.sadd(f"{self.prefix}keys", kid)
        await pipe.execute()
        return key, token

    async def get(self, key_id: str) -> ApiKey | None:
        raw: Any = await self.client.hgetall(self._key(key_id))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return ApiKey(
            key_id,
            d["name"],
            orjson.loads(d["tags"]),
            int(d["created_at"]),
            int(d["expires_at"]) if d.get("expires_at") else None,
            int(d["revoked_at"]) if d.get("revoked_at") else None,
            d["sha256"],
        )

    async def list(self) -> list[ApiKey]:
        members: Any = await self.client.smembers(f"{self.prefix}keys")
        ids = sorted(m.decode() for m in members)
        keys = [await self.get(kid) for kid in ids]
        return [k for k in keys if k is not None]

    async def revoke(self, key_id: str) -> bool:
        if not await self.client.exists(self._key(key_id)):
            return False
        await self.client.hset(self._key(key_id), "revoked_at", _now())
        return True


class MemoryApiKeyStore:
    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}

    async def create(
        self, name: str, tags: Mapping[str, str], expires_at: int | None = None
    ) -> tuple[ApiKey, str]:
        kid, token = new_token()
        key = ApiKey(kid, name, dict(tags), _now(), expires_at, None, _digest(token))
        self.keys[kid] = key
        return key, token

    async def get(self, key_id: str) -> ApiKey | None:
        return self.keys.get(key_id)

    async def list(self) -> list[ApiKey]:
        return [self.keys[k] for k in sorted(self.keys)]

    async def revoke(self, key_id: str) -> bool:
        key = self.keys.get(key_id)
        if key is None:
            return False
        self.keys[key_id] = ApiKey(
            key.id, key.name, key.tags, key.created_at, key.expires_at, _now(), key.sha256
        )
        return True
