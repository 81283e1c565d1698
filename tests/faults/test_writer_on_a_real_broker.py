"""The Kafka writer against a real (private) broker: records the broker or client refuse go to the dead-letter
topic with evidence and the writer carries on; a record sent while the broker is down is delivered when it
returns, and ``flush`` waits for it without raising."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from pathlib import Path

import orjson
import pytest

from connectors.health import monitor
from connectors.kafka_writer import KafkaWriter
from enrich.deadletter import SourceRef
from stack.procs import wait_until
from stack.topics import TopicSpec, create_topics
from tests.faults.conftest import PrivateStack
from tests.kafka_util import consume_all

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def test_oversize_records_are_dead_lettered_with_evidence_and_the_writer_carries_on(
    private_stack: PrivateStack, tmp_path: Path
) -> None:
    s = private_stack.settings(tmp_path)
    small_topic = s.topic_enriched + ".small"  # a topic whose own limit is below the producer's
    create_topics(s.kafka_bootstrap, [TopicSpec(small_topic, 1, {"max.message.bytes": str(MiB)})])
    writer = KafkaWriter.from_settings(s, small_topic, stage="test.produce")
    refused_by_broker = os.urandom(2 * MiB)  # over the topic's limit even compressed: refused by the broker
    refused_by_client = bytes(range(256)) * (
        36 * 1024
    )  # 9 MiB: over the producer's limit, refused by produce()
    writer.send([
        (b"k1", b"first", SourceRef("telemetry", 0, 10, None, b"dev-1")),
        (b"k2", refused_by_broker, SourceRef("telemetry", 0, 11, None, b"dev-2")),
        (b"k3", refused_by_client, SourceRef("telemetry", 1, 12, None, b"dev-3")),
        (b"k4", b"last", SourceRef("telemetry", 1, 13, None, b"dev-4")),
    ])  # fmt: skip
    writer.flush()
    assert [m.value() for m in consume_all(s.kafka_bootstrap, [small_topic], expected=2)] == [
        b"first",
        b"last",
    ]
    letters = {}
    for m in consume_all(s.kafka_bootstrap, [s.topic_dlq], expected=2):
        raw = m.value() or b""
        assert len(raw) <= s.kafka_max_message_bytes  # a letter always fits
        doc = orjson.loads(raw)
        letters[doc["source"]["offset"]] = doc
    assert sorted(letters) == [11, 12]
    assert {d["reason"] for d in letters.values()} == {"too_large"}
    assert base64.b64decode(letters[11]["value_b64"]) == refused_by_broker  # fits whole: no truncation
    big = letters[12]
    assert big["value_truncated"] is True and big["value_size"] == len(refused_by_client)
    assert big["value_sha256"] == hashlib.sha256(refused_by_client).hexdigest()
    assert refused_by_client.startswith(base64.b64decode(big["value_b64"]))
    assert big["source"] == {"topic": "telemetry", "partition": 1, "offset": 12, "timestamp": None,
                             "key_b64": base64.b64encode(b"dev-3").decode()}  # fmt: skip
    assert writer.dead_lettered == 2 and writer.rejected == 0


def test_a_record_sent_while_the_broker_is_down_is_delivered_when_it_returns(
    private_stack: PrivateStack, tmp_path: Path
) -> None:
    s = private_stack.settings(tmp_path)
    writer = KafkaWriter.from_settings(s, s.topic_enriched, stage="test.produce")
    writer.send([(b"k", b"before", None)])
    writer.flush()
    private_stack.kafka.kill()
    health = monitor("kafka")
    flushed = threading.Event()
    errors: list[BaseException] = []

    def send_and_flush() -> None:
        try:
            writer.send([(b"k", b"during-outage", SourceRef("telemetry", 0, 1, None, None))])
            writer.flush()  # blocks until the broker is back; never raises for the outage
            flushed.set()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=send_and_flush, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: not health.up, 60)  # the writer noticed the outage (and logged it)
        assert not flushed.is_set()
    finally:
        private_stack.kafka.start()
    assert flushed.wait(120), errors
    assert not errors
    got = [m.value() for m in consume_all(s.kafka_bootstrap, [s.topic_enriched], expected=2, timeout_s=60)]
    assert got == [b"before", b"during-outage"]
    assert health.up
