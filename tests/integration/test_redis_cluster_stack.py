"""``enrich stack up --redis-cluster``'s three masters: formed once, ready, data kept across a restart on the
same ports, listed by ``stack status``, stopped by ``stack down`` (a private state directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from enrich.settings import Settings
from stack.manager import Stack
from stack.redis_cluster import RedisClusterStack
from stack.redis_server import find_redis_server

pytestmark = pytest.mark.integration


def test_three_masters_start_keep_their_data_over_a_restart_and_stop(tmp_path: Path) -> None:
    if find_redis_server() is None:
        pytest.fail("redis-server is not installed (scripts/bootstrap installs it)")
    stack = Stack(Settings(state_dir=tmp_path, redis_url="redis://127.0.0.1:1/0"))
    cluster = stack.redis_cluster()
    try:
        assert cluster.start()
        assert cluster.ready() and all(cluster.running())
        client: Any = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        assert len(client.get_primaries()) == 3
        slots = {client.get_node_from_key(f"k{i}").name for i in range(30)}
        assert len(slots) == 3  # every master holds slots
        for i in range(30):
            client.set(f"k{i}", i)
        client.close()
        assert not cluster.start()  # running already: nothing started
        assert cluster.stop()
        again = RedisClusterStack(tmp_path / "redis-cluster")
        assert again.ports == cluster.ports  # a restart must reuse them (nodes.conf names its peers by port)
        assert again.start() and again.ready()
        client = redis.RedisCluster(host="127.0.0.1", port=again.ports[0])
        assert [int(client.get(f"k{i}") or -1) for i in range(30)] == list(range(30))  # AOF kept it
        client.close()
        (row,) = [r for r in stack.status() if r.name == "redis-cluster"]
        assert row.ready and row.address == again.url
        assert "redis-cluster" in stack.down()
        assert not any(again.running())
    finally:
        cluster.stop()
