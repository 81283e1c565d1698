"""Async, read-only access to the snapshot store's merged lookups (for the HTTP API's one async client):
the same Lua script and wire format as ``stores.redis_snapshot``, one round trip per lookup."""

from __future__ import annotations

import redis.asyncio as aioredis

from enrich.snapshot import Merged
from enrich.tables import TableSpec
from stores.redis_snapshot import LOOKUP_LUA, decode_lookup, lookup_args


class AsyncSnapshotReader:
    def __init__(self, client: aioredis.Redis, tables: dict[str, TableSpec], prefix: str = "snap:") -> None:
        self.client = client
        self.tables = tables
        self.prefix = prefix
        self._script = client.register_script(LOOKUP_LUA)

    async def lookup(self, table: str, pk: str) -> Merged:
        """The row ``pk`` of ``table`` with the rows it references and their active children."""
        args, order = lookup_args(self.tables, self.prefix, table, [pk])
        raw = await self._script(args=args)
        return decode_lookup(raw, [pk], order)[pk]
