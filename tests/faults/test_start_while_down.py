"""A worker started while Kafka and Redis are both down waits for them (with log lines) and then does its
work; it does not crash (private broker and Redis)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.kafka_writer import KafkaWriter
from enrich.tables import DEFAULT_TABLES
from simulator.workload import make_workload
from stack.procs import wait_until
from stores.redis_client import redis_client
from stores.redis_snapshot import RedisSnapshotStore
from tests.faults.conftest import PrivateStack
from tests.integration.flow_proc import start_flow

pytestmark = pytest.mark.integration


def test_the_snapshot_flow_started_with_both_dependencies_down_waits_then_loads(
    private_stack: PrivateStack, tmp_path: Path
) -> None:
    s = private_stack.settings(tmp_path)
    wl = make_workload("debezium", 400, keys=60)
    writer = KafkaWriter.from_settings(s, s.topic_dlq, stage="test.produce")
    for key, value, table in wl.messages:
        writer.send_to(s.cdc_topic(table), key, value)
    writer.flush()
    private_stack.kafka.kill()
    private_stack.redis.kill()
    log = tmp_path / "flow.log"
    proc = start_flow("snapshot", s, tmp_path / "rec", "--until-eof", log=log)
    try:
        assert wait_until(lambda: "kafka unreachable" in log.read_text(), 60), log.read_text()[-2000:]
        assert proc.poll() is None  # waiting, not crashed
        private_stack.kafka.start()
        assert wait_until(lambda: "redis unreachable" in log.read_text(), 60), log.read_text()[-2000:]
        assert proc.poll() is None
        private_stack.redis.start()
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    store = RedisSnapshotStore.from_settings(s, redis_client(s))
    assert {t: store.rows(t) for t in DEFAULT_TABLES} == wl.truth
    text = log.read_text()
    assert "kafka reachable again" in text and "redis reachable again" in text
