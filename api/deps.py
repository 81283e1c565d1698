"""What every request uses: the process's services (built once at start-up) and the authenticated key."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.alerts_adapter import Silences
from api.cursor import Cursors
from api.metrics import ApiMetrics
from api.policy import Action, Policies
from api.problems import Problem
from enrich.rules.model import Rule
from enrich.settings import Settings
from stores.apikeys import ApiKey, ApiKeyStore, authenticate
from stores.snapshot_reader import AsyncSnapshotReader
from stores.vehicles import VehicleReader

KEY_CACHE_S = 1.0  # a revoked key stops working within this


@dataclass(slots=True)
class Services:
    settings: Settings
    redis: aioredis.Redis
    vehicles: VehicleReader
    keys: ApiKeyStore
    policies: Policies
    silences: Silences
    snapshot: AsyncSnapshotReader
    cursors: Cursors
    rules: list[Rule]
    metrics: ApiMetrics
    broker: Any = None  # api.sse.Broker
    _key_cache: dict[str, tuple[float, ApiKey | None]] = field(default_factory=dict)

    async def principal(self, token: str) -> ApiKey | None:
        now = time.monotonic()
        hit = self._key_cache.get(token)
        if hit is not None and now - hit[0] < KEY_CACHE_S:
            key = hit[1]
            if key is not None and not key.valid(int(time.time() * 1000)):
                return None
            return key
        key = await authenticate(self.keys, token)
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        self._key_cache[token] = (now, key)
        return key

    def allowed(self, key: ApiKey, action: Action, tags: dict[str, str]) -> bool:
        ok = self.policies.decide(key, action, tags)
        self.metrics.decisions.labels(action, "allow" if ok else "deny").inc()
        return ok

    async def allowed_classes(self, key: ApiKey, action: Action) -> set[str]:
        """The tag classes ``key`` may see for a list action: one decision per class (cached)."""
        classes = await self.vehicles.classes()
        return {cid for cid, tags in classes.items() if self.policies.decide(key, action, tags)}


async def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `enrich api keys create`, sent as `Authorization: Bearer fe_<id>_<secret>`.",
)
UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="fleet-enrich"'}


async def key_of(svc: Services, authorization: str | None) -> ApiKey:
    """The valid key of an ``Authorization: Bearer`` header, else a 401 problem."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "send an API key: Authorization: Bearer <key>", headers=UNAUTHORIZED)
    key = await svc.principal(token.strip())
    if key is None:
        raise Problem(401, "the API key is malformed, unknown, revoked or expired", headers=UNAUTHORIZED)
    return key


async def principal(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> ApiKey:
    svc = await services(request)
    return await key_of(svc, f"Bearer {creds.credentials}" if creds is not None else None)


_ALLOWED: dict[int, frozenset[str]] = {}


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def strict_query(request: Request) -> None:
    """Unknown query parameters are refused (422), so a typo (``?fleeet=``) never silently widens a list."""
    if not request.query_params:
        return
    route: Any = request.scope.get("route")
    allowed = _ALLOWED.get(id(route))
    if allowed is None:
        allowed = _ALLOWED[id(route)] = frozenset(_query_names(route.dependant) if route is not None else ())
    unknown = sorted(set(request.query_params) - allowed)[:5]
    if unknown:
        errors = [{"field": f"query.{u[:40]}", "message": "unknown parameter"} for u in unknown]
        raise Problem(
            422, "unknown query parameter(s): " + ", ".join(repr(u[:40]) for u in unknown), errors=errors
        )


Svc = Annotated[Services, Depends(services)]
Key = Annotated[ApiKey, Depends(principal)]
