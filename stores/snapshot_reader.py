"""Async, read-only access to the snapshot's device timelines (for the HTTP API's one async client): the
same script, reads and wire format as ``stores.redis_snapshot`` — one round trip per lookup on one Redis,
three on a cluster."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from enrich.asof import Timeline, build_timeline
from enrich.tables import JoinModel
from stores.redis_snapshot import cluster_gather_plan, decode_lookup, lookup_args
from stores.snapshot_scripts import LOOKUP_LUA


class AsyncSnapshotReader:
    def __init__(self, client: aioredis.Redis | Any, model: JoinModel, prefix: str = "snap:") -> None:
        self.client = client
        self.model = model
        self.prefix = prefix
        self.cluster = isinstance(client, aioredis.RedisCluster)
        self._script = client.register_script(LOOKUP_LUA)

    async def lookup(self, device_id: str) -> Timeline:
        """The device's join over time (its row, its car's, the car's chosen children)."""
        if not self.cluster:
            raw = await self._script(args=lookup_args(self.model, self.prefix, [device_id]))
            gathered = decode_lookup(self.model, raw, [device_id])
        else:
            plan = cluster_gather_plan(self.model, self.prefix, [device_id])
            commands = next(plan)
            while True:
                pipe = self.client.pipeline(transaction=False)
                for cmd in commands:
                    pipe.execute_command(*cmd)
                try:
                    commands = plan.send(await pipe.execute())
                except StopIteration as done:
                    gathered = done.value
                    break
        return build_timeline(self.model, device_id, gathered[device_id])
