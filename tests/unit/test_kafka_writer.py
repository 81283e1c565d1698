"""The Kafka writer's error handling, against a fake producer behind ``ProducerPort`` (no broker)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from jsonschema import Draft202012Validator

from connectors.health import monitor
from connectors.kafka_config import letter_budget
from connectors.kafka_writer import KafkaWriter, KafkaWriterError
from connectors.letters import fit_letter
from enrich.deadletter import SourceRef
from enrich.records import Record

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "dead-letter.v1.schema.json").read_text())
Verdict = Callable[[str, bytes | None], KafkaError | None]


class FakeMsg:
    def __init__(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self._t, self._k, self._v = topic, key, value

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v


class FakeProducer:
    """A local queue of ``capacity`` records; ``poll`` delivers them while the broker is up.

    ``on_produce`` may refuse a record at ``produce()`` (KafkaException), ``on_delivery`` may fail its
    delivery (reported to the callback, like librdkafka with ``delivery.report.only.error``).
    """

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.queue: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self.delivered: list[tuple[str, bytes | None, bytes | None]] = []
        self.up = True
        self.up_after_polls: int | None = None
        self.polls = 0
        self.on_produce: Verdict = lambda _t, _v: None
        self.on_delivery: Verdict = lambda _t, _v: None
        self.default_cb: Any = None
        self.full_raised = 0

    def produce(
        self, topic: str, value: bytes | None = None, key: bytes | str | None = None, **kw: Any
    ) -> None:
        refused = self.on_produce(topic, value)
        if refused is not None:
            raise KafkaException(refused)
        if len(self.queue) >= self.capacity:
            self.full_raised += 1
            raise BufferError("Local: Queue full")
        k = key.encode() if isinstance(key, str) else key
        self.queue.append((topic, k, value, kw.get("on_delivery") or self.default_cb))

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        if self.up_after_polls is not None and self.polls >= self.up_after_polls:
            self.up = True
        if not self.up:
            return 0
        todo, self.queue = self.queue, []
        for topic, key, value, cb in todo:
            err = self.on_delivery(topic, value)
            if err is None:
                self.delivered.append((topic, key, value))
            elif cb is not None:
                cb(err, FakeMsg(topic, key, value))
        return len(todo)

    def flush(self, timeout: float = 0) -> int:
        self.poll(timeout)
        return len(self.queue)

    def __len__(self) -> int:
        return len(self.queue)


def writer(fake: FakeProducer, *, dlq: str | None = "dlq", max_bytes: int = 8 * 1024 * 1024) -> KafkaWriter:
    w = KafkaWriter("unused:9092", "out", dlq_topic=dlq, stage="test.produce", producer=fake,
                    max_message_bytes=max_bytes)  # fmt: skip
    fake.default_cb = w._on_delivery  # what the real producer's ``on_delivery`` setting does
    return w


def ref(offset: int) -> SourceRef:
    return SourceRef("telemetry", 1, offset, 1_718_000_000_000, b"dev-1")


def letters(fake: FakeProducer) -> list[dict[str, Any]]:
    return [orjson.loads(v or b"") for t, _k, v in fake.delivered if t == "dlq"]


def out(fake: FakeProducer) -> list[bytes | None]:
    return [v for t, _k, v in fake.delivered if t == "out"]


def test_a_full_queue_waits_for_room_instead_of_raising() -> None:
    fake = FakeProducer(capacity=3)
    w = writer(fake)
    w.send([(b"k", f"v{i}".encode(), ref(i)) for i in range(20)])
    w.flush()
    assert fake.full_raised > 0  # the queue really was full
    assert out(fake) == [f"v{i}".encode() for i in range(20)]  # all delivered, in order


def test_too_large_at_produce_is_dead_lettered_with_its_source_and_the_writer_carries_on() -> None:
    fake = FakeProducer()
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    fake.on_produce = lambda t, v: too_large if t == "out" and v is not None and len(v) > 100 else None
    w = writer(fake)
    big = b"x" * 1000
    w.send([(b"a", b"before", ref(1)), (b"b", big, ref(2)), (b"c", b"after", ref(3))])
    w.flush()
    assert out(fake) == [b"before", b"after"]
    [letter] = letters(fake)
    assert letter["reason"] == "too_large"
    assert letter["stage"] == "test.produce"
    key_b64 = base64.b64encode(b"dev-1").decode()
    assert letter["source"] == {
        "topic": "telemetry", "partition": 1, "offset": 2, "timestamp": 1_718_000_000_000, "key_b64": key_b64
    }  # fmt: skip
    assert base64.b64decode(letter["value_b64"]) == big
    assert Draft202012Validator(SCHEMA).is_valid(letter)
    assert w.dead_lettered == 1 and w.rejected == 0


def test_a_record_the_broker_refuses_in_the_delivery_report_is_dead_lettered() -> None:
    fake = FakeProducer()
    fake.on_delivery = lambda t, v: KafkaError(KafkaError.INVALID_RECORD) if v == b"bad" else None
    w = writer(fake)
    rec = Record("telemetry", 0, 77, b"dev-9", b"{...}", 5)  # a Record is a source too
    w.send([(b"k", b"good", ref(1)), (b"k", b"bad", rec), (b"k", b"good2", ref(3))])
    w.flush()
    assert out(fake) == [b"good", b"good2"]
    [letter] = letters(fake)
    source = letter["source"]
    assert (letter["reason"], source["offset"], source["partition"]) == ("invalid_record", 77, 0)


def test_a_retriable_delivery_error_is_produced_again_not_dropped() -> None:
    fake = FakeProducer()
    failures = {b"flaky": 2}

    def once(_t: str, v: bytes | None) -> KafkaError | None:
        if v is not None and failures.get(v, 0) > 0:
            failures[v] -= 1
            return KafkaError(KafkaError._MSG_TIMED_OUT, "timed out", retriable=True)
        return None

    fake.on_delivery = once
    w = writer(fake)
    w.send([(b"k", b"flaky", ref(1)), (None, b"plain", None)])
    w.flush()
    assert sorted(v or b"" for v in out(fake)) == [b"flaky", b"plain"]
    assert letters(fake) == [] and w.retried == 2


def test_flush_waits_while_the_broker_is_away_and_reports_the_outage() -> None:
    fake = FakeProducer()
    fake.up, fake.up_after_polls = False, 4
    w = writer(fake)
    health = monitor("kafka")
    w._on_client_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert not health.up
    w.send([(b"k", b"v", ref(1))])
    w.flush()  # returns only once delivered, without raising
    assert out(fake) == [b"v"]
    assert health.up


def test_configuration_errors_raise() -> None:
    fake = FakeProducer()
    fake.on_delivery = lambda _t, _v: KafkaError(KafkaError._UNKNOWN_TOPIC)
    w = writer(fake)
    with pytest.raises(KafkaWriterError, match="out"):  # from send's poll, or at the latest from flush
        w.send([(b"k", b"v", ref(1))])
        w.flush()


def test_without_a_source_a_refused_record_is_counted_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeProducer()
    fake.on_produce = lambda t, v: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if v == b"huge" else None
    w = writer(fake)
    w.send([(b"k", b"huge"), (b"k", b"fine")])
    w.flush()
    assert out(fake) == [b"fine"] and letters(fake) == []
    assert w.rejected == 1
    assert "not dead-lettered" in caplog.text


def test_a_dead_letter_too_large_for_kafka_is_truncated_with_evidence() -> None:
    limit = 200_000
    fake = FakeProducer()
    fake.on_produce = lambda t, v: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if t == "out" else None
    w = writer(fake, max_bytes=limit)
    big = bytes(range(256)) * 2000  # 512,000 bytes: its base64 alone is far over the limit
    w.send([(b"k", big, ref(5))])
    w.flush()
    [(_t, _k, raw)] = [d for d in fake.delivered if d[0] == "dlq"]
    assert raw is not None and len(raw) <= letter_budget(limit)
    letter = orjson.loads(raw)
    assert letter["value_truncated"] is True
    assert letter["value_size"] == len(big)
    assert letter["value_sha256"] == hashlib.sha256(big).hexdigest()
    kept = base64.b64decode(letter["value_b64"])
    assert len(kept) > 100_000 and big.startswith(kept)
    assert Draft202012Validator(SCHEMA).is_valid(letter)


def test_fit_letter_leaves_small_letters_alone_and_truncates_big_ones_idempotently() -> None:
    small = orjson.dumps({"reason": "x", "value_b64": base64.b64encode(b"abc").decode()})
    assert fit_letter(small, 1000) is small
    doc = {"reason": "too_large", "message": "m" * 50_000, "source": {"key_b64": "a2V5"},
           "value_b64": base64.b64encode(b"z" * 30_000).decode()}  # fmt: skip
    once = fit_letter(orjson.dumps(doc), 5000)
    assert len(once) <= 5000
    twice = fit_letter(once, 4000)
    assert len(twice) <= 4000
    assert orjson.loads(twice)["value_size"] == 30_000  # the evidence of the first cut is kept
